"""What a shift costs and what can be done: label-free accuracy estimates and the page, their
design (harm), label-shift estimates, mitigation, and classification metrics."""
