"""Running the pipeline on this machine: embedded S3 server and event delivery."""
