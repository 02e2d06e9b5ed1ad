"""One runner per command family: files in, outputs written, a Report out. The CLI calls these;
the compute they drive lives in optimize.py, edit.py and sweep.py."""
