"""The modality definitions (image, audio, text) and the registry every command asks."""
