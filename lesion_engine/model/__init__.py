"""The model: artifacts and cards, the networks, their input grid, candidates, measurements and the assembled result; the imported PI-CAI models in their own packages."""
