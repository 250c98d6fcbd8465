"""Publishing a run: its model card (read from the run folder, rendered from a template) and the push to the Hub."""
