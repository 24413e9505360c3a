"""What operators run against a live deployment: lag, offset resets, what the workers set aside
(dead letters, quarantined records) and the offsets they skipped."""
