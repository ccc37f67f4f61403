"""`factory browse` and `factory preview --html`: a local web page over a dataset or view."""
