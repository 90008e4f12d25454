"""From image files to features: safe decoding, the content-addressed feature cache, work claims."""
