"""What the API does, apart from HTTP: labeling, durable jobs, review and exports."""
