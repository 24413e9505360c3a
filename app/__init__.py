"""orders: HTTP -> Kafka -> worker group -> PostgreSQL, with every guarantee tested for real."""
