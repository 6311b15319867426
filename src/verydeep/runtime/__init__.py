"""What every part of the package runs on: files written atomically, locks, the one distributed
context and its collectives (and, later, devices)."""
