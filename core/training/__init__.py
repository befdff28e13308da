"""Training jobs: the engine's DDPM training and LoRA fine-tuning of diffusers models."""
