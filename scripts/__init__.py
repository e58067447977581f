"""Command-line front doors: parse flags, call the remedi library, write results."""
