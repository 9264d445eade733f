"""The classifier (`model.network`) and what the monitors look at, computed once per image
(`model.features`)."""
