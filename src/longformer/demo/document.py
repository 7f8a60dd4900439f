"""The demo's default long document: procedurally generated prose about distinct topics.

No download and no third-party text: every sentence comes from the templates below, filled from small
word lists by a seeded random generator, so the same seed always gives the same document. The
topics share no vocabulary on purpose, which makes the retrieval result easy to judge: a query about
one topic should pull up that topic's paragraphs wherever they sit in the document.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

# topic -> (heading, slot fillers, sentence templates). Slots are {a}, {b}, {c}, {n}.
TOPICS: dict[str, tuple[str, dict[str, list[str]], list[str]]] = {
    "beekeeping": (
        "Keeping bees through the seasons",
        {
            "a": ["the workers", "the foragers", "the older bees", "the house bees", "the winter bees"],
            "b": ["the brood frames", "the honey super", "the entrance reducer", "the smoker", "the hive tool"],
            "c": ["clover", "lime blossom", "heather", "oilseed rape", "bramble"],
        },
        [
            "In winter {a} cluster around the stores and shiver their flight muscles to keep the colony warm.",
            "A beekeeper who opens the hive in cold weather lets out heat the bees cannot afford to lose.",
            "When {c} flowers, {a} bring back nectar faster than the comb can be drawn.",
            "Before the first frost the beekeeper fits {b} and leaves enough honey for the bees to eat until spring.",
            "A strong colony of {n} thousand bees can starve in late winter if the honey runs out.",
            "Swarming in early summer is how a colony divides: the old queen leaves with half of the workers.",
            "Checking {b} every nine days in spring shows whether queen cells are being raised.",
            "Varroa mites breed in capped brood, so beekeepers count mites on a sticky board each autumn.",
            "Honey from {c} sets hard in the jar, while other honeys stay runny for months.",
            "The colony seals gaps in the hive with propolis, a resin the bees collect from tree buds.",
        ],
    ),
    "tidepools": (
        "Life in the tide pools",
        {
            "a": ["sea anemones", "limpets", "hermit crabs", "periwinkles", "starfish"],
            "b": ["the upper shore", "the middle shore", "the kelp zone", "the splash zone", "a rock crevice"],
            "c": ["the spring tide", "the neap tide", "a summer storm", "the ebbing water", "the midday sun"],
        },
        [
            "When the tide goes out, {a} in {b} must survive hours of heat and drying wind.",
            "Limpets clamp down on the rock and return to the same scar after every high tide.",
            "During {c} the pools warm quickly and the water loses oxygen.",
            "Sea anemones close up into tight knobs to hold seawater until the sea returns.",
            "A single pool on {b} may shelter {n} different species of seaweed and animal.",
            "Hermit crabs trade up to larger empty shells as they grow, and sometimes fight over them.",
            "Starfish pry mussels open with steady pressure from hundreds of tube feet.",
            "Salinity in a shallow pool rises as water evaporates and falls again when rain fills it.",
            "Visitors should turn rocks back the way they found them, because {a} live underneath.",
            "The zonation of the shore, from {b} down to the lowest rocks, follows how long each band is exposed.",
        ],
    ),
    "railways": (
        "Signalling on the railway",
        {
            "a": ["the track circuit", "the axle counter", "the interlocking", "the train detection"],
            "b": ["a red aspect", "a double yellow", "a single yellow", "a green aspect", "a flashing yellow"],
            "c": ["the block section", "the junction", "the level crossing", "the passing loop", "the terminus"],
        },
        [
            "A train may only enter {c} when {a} has proved that it is clear of other trains.",
            "The driver who sees {b} must be ready to stop at the next signal.",
            "A track circuit detects the train because its wheels short the current running through the rails.",
            "Mechanical interlocking made it impossible to set conflicting routes with the levers in the box.",
            "At {c} the points must be locked before the signal protecting them can clear.",
            "Modern signalling centres control {n} miles of line from a single room of screens.",
            "An automatic warning system sounds a horn in the cab on the approach to a restrictive signal.",
            "Single-line working with a token ensures that only one train at a time occupies the section.",
            "Braking distance grows with speed, so faster lines need signals spaced further apart.",
            "{a} reports a failure as a track occupied, which keeps the fault on the safe side.",
        ],
    ),
    "bread": (
        "Baking sourdough bread",
        {
            "a": ["the starter", "the dough", "the levain", "the loaf", "the crumb"],
            "b": ["rye flour", "strong white flour", "wholemeal flour", "spelt flour", "a little salt"],
            "c": ["the banneton", "the Dutch oven", "the proving basket", "the baking stone", "the lame"],
        },
        [
            "A sourdough starter is flour and water colonised by wild yeast and lactic acid bacteria.",
            "Feeding {a} with {b} twice a day keeps it lively and sour.",
            "Long cold fermentation in the fridge deepens the flavour of {a}.",
            "Stretch and fold the dough every half hour to build gluten without kneading.",
            "Shaping the loaf tightly and resting it in {c} helps it hold its height in the oven.",
            "Bake at a high heat for {n} minutes with steam, then lower the heat to set the crust.",
            "Scoring the top with {c} lets the loaf expand where the baker chooses.",
            "An open, glossy crumb comes from a wet dough and gentle handling.",
            "If the loaf collapses when turned out, it has usually proved for too long.",
            "Wait until the bread has cooled before slicing, because the crumb is still setting inside.",
        ],
    ),
    "volcanoes": (
        "Watching a restless volcano",
        {
            "a": ["seismometers", "tiltmeters", "gas sensors", "satellite radar", "thermal cameras"],
            "b": ["the summit crater", "the flank vents", "the magma chamber", "the lava dome", "the caldera floor"],
            "c": ["sulphur dioxide", "carbon dioxide", "steam", "volcanic ash", "hydrogen sulphide"],
        },
        [
            "Swarms of small earthquakes often mean magma is forcing its way up beneath {b}.",
            "Tiltmeters record the ground swelling by a few centimetres as the magma chamber fills.",
            "A sudden rise in {c} at the vents can warn that fresh magma is near the surface.",
            "Observatories raise the alert level when several signals change at once.",
            "Pyroclastic flows rush down the slopes at over {n} kilometres an hour.",
            "Lava flows are slow enough to walk away from, but they bury roads and houses.",
            "Ash clouds close airspace because the glassy particles melt inside jet engines.",
            "Mapping old deposits shows how far past eruptions reached from {b}.",
            "Radar on orbiting satellites measures deformation across the whole volcano every few days.",
            "Evacuation plans depend on knowing which valleys the flows are likely to follow.",
        ],
    ),
    "chess": (
        "Planning in the chess middlegame",
        {
            "a": ["the knight", "the bishop pair", "the rook", "the queen", "a passed pawn"],
            "b": ["the open file", "the long diagonal", "an outpost square", "the seventh rank", "the weak king"],
            "c": ["a pawn break", "a minority attack", "an exchange sacrifice", "a kingside storm", "a quiet move"],
        },
        [
            "A player with no plan drifts, so strong players look for {b} to aim their pieces at.",
            "A knight is strongest on an outpost square where no enemy pawn can drive it away.",
            "{c} can open lines towards the king when the centre is closed.",
            "Trading pieces helps the side with more space only if it keeps the initiative.",
            "Doubled or isolated pawns become targets once the queens come off the board.",
            "Calculating {n} moves ahead matters less than choosing the right candidate moves.",
            "Rooks belong on the open file, where they press against the pawns at its end.",
            "Before launching {c}, check that your own king is safe from a counterattack.",
            "{a} often decides the endgame that follows a well-played middlegame.",
            "Improving the worst-placed piece is a reliable plan when nothing else suggests itself.",
        ],
    ),
    "glaciers": (
        "How glaciers move and retreat",
        {
            "a": ["the ice", "the meltwater", "the terminus", "the crevasse field", "the moraine"],
            "b": ["the bedrock", "the valley floor", "the accumulation zone", "the ablation zone", "the icefall"],
            "c": ["summer melt", "winter snowfall", "basal sliding", "internal deformation", "calving"],
        },
        [
            "Snow that survives the summer is slowly pressed into dense blue glacier ice.",
            "The ice flows downhill partly by {c} and partly by sliding over {b}.",
            "Crevasses open where the glacier speeds up or bends over a step in the rock.",
            "The balance between {c} and melting decides whether the glacier grows or shrinks.",
            "Many Alpine glaciers have lost {n} per cent of their length in a century.",
            "Meltwater running under the ice lubricates the bed and can speed the flow for days.",
            "The retreating ice leaves ridges of rock debris that mark where the glacier once ended.",
            "Researchers drill stakes into {b} to measure how much ice melts each year.",
            "Where the glacier meets the sea, {c} breaks off icebergs from the ice cliff.",
            "Striations scratched into {b} show the direction the ice travelled.",
        ],
    ),
    "astronomy": (
        "Observing the night sky with a small telescope",
        {
            "a": ["the refractor", "the reflector", "the eyepiece", "the finder scope", "the star diagonal"],
            "b": ["the Moon", "Jupiter", "Saturn", "the Orion Nebula", "a double star"],
            "c": ["light pollution", "poor seeing", "dew on the optics", "a full Moon", "thin cloud"],
        },
        [
            "Let the telescope cool to the night air for half an hour before observing, or the image will shimmer.",
            "{b} rewards even a small telescope with detail on a steady night.",
            "{c} washes out faint galaxies, so deep-sky observers travel to dark sites.",
            "Low magnification and a wide field make it easier to find objects with {a}.",
            "Through a telescope of {n} millimetres aperture the rings of Saturn are clearly visible.",
            "Averted vision, looking slightly to one side, reveals faint nebulae the eye otherwise misses.",
            "A red torch preserves night vision while reading star charts.",
            "Aligning the finder scope with the main tube in daylight saves frustration after dark.",
            "Observing {b} near the horizon is hard because the light passes through more air.",
            "Keeping a log of each session records what was seen and under what conditions.",
        ],
    ),
}


@dataclass(frozen=True)
class Paragraph:
    topic: str
    text: str


def generate_paragraphs(seed: int = 0, rounds: int = 6, sentences: tuple[int, int] = (4, 6)) -> list[Paragraph]:
    """Paragraphs of generated prose: ``rounds`` passes over every topic in a shuffled order, one
    paragraph of ``sentences`` (min, max) sentences per topic and pass. Deterministic in ``seed``."""
    rng = random.Random(seed)
    paragraphs = []
    for _ in range(rounds):
        order = list(TOPICS)
        rng.shuffle(order)
        for topic in order:
            _, slots, templates = TOPICS[topic]
            chosen = rng.sample(templates, rng.randint(*sentences))
            text = " ".join(_fill(t, slots, rng) for t in chosen)
            paragraphs.append(Paragraph(topic, text))
    return paragraphs


def _fill(template: str, slots: dict[str, list[str]], rng: random.Random) -> str:
    values = {name: rng.choice(options) for name, options in slots.items()}
    values["n"] = str(rng.choice([3, 5, 12, 20, 40, 60, 80, 150]))
    sentence = template.format(**values)
    return sentence[0].upper() + sentence[1:]
