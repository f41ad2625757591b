"""The competition's data: layouts read into one canonical table, image decode and cache, the
survey `make init` does, the content manifest of the input files, and the demos."""
