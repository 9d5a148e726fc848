"""Planning a job before renting it: `mmntp plan` (commands.py) and its HLO counts (hlo.py)."""
