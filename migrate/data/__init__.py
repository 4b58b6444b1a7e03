"""push-data / pull-data: mapping rules, rsync building and parsing, transfers."""
