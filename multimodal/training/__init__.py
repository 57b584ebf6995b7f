"""The trainer: a run, its loop and step, its configuration, checkpoints, resumption, start-up checks, EMA, FSDP and what it reads."""
