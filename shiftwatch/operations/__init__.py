"""The check an operator runs on a batch, without the command line: the check itself, its two
answers (page), and its text and HTML reports."""
