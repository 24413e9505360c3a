"""What operators run against a live deployment: lag, offset resets, dead letters."""
