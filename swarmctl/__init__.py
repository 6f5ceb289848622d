"""swarmctl: the command line for a swarmd cluster."""
