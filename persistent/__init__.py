"""persistent: linear probes of spatial information in frozen ConvNet representations."""
