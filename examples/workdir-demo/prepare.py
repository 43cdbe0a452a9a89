"""The spec's setup step: runs before train.py in the same folder (here it writes a vocabulary file)."""

from pathlib import Path

Path("vocab.txt").write_text("cat\ndog\nbird\n")
print("setup: vocab.txt written")
