"""The demo's built-in English sentences: paraphrase pairs and unrelated ones."""

from __future__ import annotations

__all__ = ["DEMO_SENTENCES", "PARAPHRASE_PAIRS", "UNRELATED_PAIRS"]

# Each pair says the same thing in other words; a good embedding puts them close.
PARAPHRASE_PAIRS: tuple[tuple[str, str], ...] = (
    ("A man is playing a guitar on stage.", "Someone performs guitar music at a concert."),
    ("The cat is sleeping on the sofa.", "A kitten naps on the couch."),
    ("How do I reset my password?", "What are the steps to change my forgotten password?"),
    ("The stock market fell sharply today.", "Share prices dropped steeply this afternoon."),
    ("She is cooking pasta for dinner.", "She is making spaghetti for the evening meal."),
    ("The train to Paris was delayed by two hours.", "Our Paris train arrived two hours late."),
    ("It is going to rain tomorrow.", "The forecast says there will be showers tomorrow."),
    ("The children are playing football in the park.", "Kids kick a soccer ball around the park."),
    ("He bought a new laptop last week.", "Last week he purchased a new notebook computer."),
    ("The doctor told him to get more sleep.", "His physician advised him to rest more at night."),
    ("This restaurant serves excellent sushi.", "The sushi at this place is superb."),
    ("The meeting has been moved to Friday.", "We rescheduled the meeting for Friday."),
)

# Unrelated sentences on many topics, from short to long.
_OTHERS: tuple[str, ...] = (
    "Photosynthesis converts sunlight, water and carbon dioxide into sugar and oxygen.",
    "The Treaty of Westphalia ended the Thirty Years' War in 1648.",
    "Quantum computers use qubits that can exist in superposition.",
    "Please remember to water the tomatoes before you leave.",
    "The quarterly report shows revenue grew by twelve percent.",
    "A recursive function must have a base case to terminate.",
    "The orchestra rehearsed Beethoven's ninth symphony all afternoon.",
    "Mount Everest is the highest mountain above sea level.",
    "Add two cups of flour and a pinch of salt to the bowl.",
    "The defendant pleaded not guilty to all charges.",
    "Honeybees communicate the location of flowers through a waggle dance.",
    "My grandmother knits warm scarves every winter.",
    "The spacecraft entered orbit around Jupiter after a five-year journey.",
    "Inflation erodes the purchasing power of savings.",
    "The referee showed the striker a red card in the final minute.",
    "Backups should be tested regularly, not just created.",
    "The ancient library of Alexandria held thousands of scrolls.",
    "Tighten the bolts in a star pattern to seat the wheel evenly.",
    "Coral reefs are threatened by rising ocean temperatures.",
    "The novel follows three generations of a family in Lagos.",
    "Vaccines train the immune system to recognise a pathogen.",
    "He forgot his umbrella and got soaked on the way home.",
    "The city council approved a new bicycle lane on Main Street.",
    "Neural networks are trained by gradient descent on a loss function.",
    "Hot air balloons rise because warm air is less dense than cold air.",
    "The museum is closed on Mondays.",
    "Elephants can recognise themselves in a mirror.",
    "Our flight was cancelled because of a snowstorm in Chicago.",
    "Compound interest rewards those who start saving early.",
    "The violinist tuned her instrument before the recital.",
    "Glaciers carve U-shaped valleys as they move downhill.",
    "Click the blue button to download the installer.",
    "The senator proposed a bill to lower prescription drug prices.",
    "A balanced diet includes vegetables, whole grains and protein.",
    "The lighthouse keeper watched the storm roll in from the sea.",
    "Dolphins sleep with one half of their brain at a time.",
    "Wow!",
    "Why is the sky blue?",
)

DEMO_SENTENCES: tuple[str, ...] = tuple(s for pair in PARAPHRASE_PAIRS for s in pair) + _OTHERS

# Pairs with nothing in common; a good embedding puts them far apart.
UNRELATED_PAIRS: tuple[tuple[str, str], ...] = (
    (PARAPHRASE_PAIRS[0][0], _OTHERS[0]),
    (PARAPHRASE_PAIRS[1][0], _OTHERS[4]),
    (PARAPHRASE_PAIRS[2][0], _OTHERS[12]),
    (PARAPHRASE_PAIRS[3][0], _OTHERS[10]),
    (PARAPHRASE_PAIRS[4][0], _OTHERS[9]),
    (_OTHERS[1], _OTHERS[8]),
    (_OTHERS[3], _OTHERS[23]),
)
