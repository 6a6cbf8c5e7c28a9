"""What radiologists give back: SEG labels and their conventions, SR measurements and the verdicts read from them."""
