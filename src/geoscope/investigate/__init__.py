"""What investigators ask beyond the answer: where in the photo the answer comes from."""
