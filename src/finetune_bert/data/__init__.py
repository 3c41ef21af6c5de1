"""Data: files and hub datasets read, rows checked, labels mapped, texts tokenized."""
