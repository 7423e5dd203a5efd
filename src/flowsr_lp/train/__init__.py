"""Training flows (by likelihood) and latent modules (through the frozen flow)."""
