"""The images: FashionMNIST and its domain split, the deployment shifts, the corruption families
of the power study, and the batches `shiftwatch check` reads."""
