"""Where on Earth: great-circle maths and metrics, the gazetteer, regions, cells and place labels, names."""
