"""Workers: processes that claim jobs, fetch the inputs, run the model of each job (and its shadows) and store the results."""
