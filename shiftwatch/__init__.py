"""shiftwatch: detect distribution shift in image data and measure what it does to a classifier."""

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 28
# The four deployment sets built from domain B, so each shift's effect can be told apart.
DEPLOYMENT_SETS = ("b_raw", "b_covariate", "b_label", "b_shift")
# The ones a shift experiment changes (b_raw is domain B itself: the no-shift control).
SHIFTED_SETS = DEPLOYMENT_SETS[1:]


class ShiftwatchError(Exception):
    """A problem the user can fix (bad parameter, missing or corrupt file, empty set).

    Stage scripts turn it into one line on stderr and exit code 2.
    """
