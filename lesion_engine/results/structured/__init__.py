"""Structured documents of a result: the TID 1500 Structured Report (lesions, gland) and the Key Object Selection."""
