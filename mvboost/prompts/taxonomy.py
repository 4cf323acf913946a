"""Object taxonomy that steers prompt generation toward coverage (≥200 categories with attributes)."""
from __future__ import annotations

TAXONOMY_VERSION = "v1"

CATEGORIES: dict[str, tuple[str, ...]] = {
    "furniture": ("armchair", "bar stool", "bookshelf", "chest of drawers", "coffee table", "desk lamp",
                  "dining chair", "floor lamp", "footstool", "nightstand", "rocking chair", "sofa", "wardrobe",
                  "writing desk", "folding screen", "bench", "hat stand", "cradle"),
    "kitchenware": ("teapot", "coffee mug", "frying pan", "saucepan", "kettle", "cutting board", "ladle",
                    "whisk", "salt shaker", "pepper mill", "mixing bowl", "wine glass", "cake stand", "butter dish",
                    "toaster", "blender", "espresso machine", "rolling pin", "colander", "gravy boat"),
    "tools": ("hammer", "screwdriver", "wrench", "hand saw", "power drill", "tape measure", "pliers", "chisel",
              "axe", "shovel", "rake", "watering can", "wheelbarrow", "toolbox", "spirit level", "vise", "anvil"),
    "vehicles": ("bicycle", "motorcycle", "vintage car", "pickup truck", "school bus", "tractor", "sailboat",
                 "canoe", "steam locomotive", "biplane", "hot air balloon", "scooter", "skateboard", "go-kart",
                 "submarine", "helicopter", "rowing boat"),
    "toys": ("teddy bear", "rubber duck", "toy robot", "rocking horse", "spinning top", "yo-yo", "toy soldier",
             "jack-in-the-box", "wooden train", "kite", "dollhouse", "building blocks", "plush rabbit",
             "toy dinosaur", "marionette", "snow globe"),
    "instruments": ("acoustic guitar", "violin", "trumpet", "saxophone", "snare drum", "accordion", "harp",
                    "ukulele", "flute", "tambourine", "xylophone", "banjo", "french horn", "metronome"),
    "electronics": ("desk fan", "radio", "camera", "headphones", "game controller", "typewriter", "rotary phone",
                    "television set", "laptop", "table clock", "alarm clock", "loudspeaker", "microphone",
                    "film projector"),
    "containers": ("vase", "treasure chest", "wicker basket", "barrel", "jar", "bottle", "urn", "flower pot",
                   "lantern", "birdcage", "suitcase", "backpack", "handbag", "jewelry box", "bucket"),
    "clothing": ("sneaker", "cowboy boot", "top hat", "baseball cap", "leather glove", "wristwatch", "sunglasses",
                 "umbrella", "scarf on a stand", "helmet", "crown", "necklace on a bust"),
    "food": ("birthday cake", "cupcake", "pineapple", "watermelon", "pumpkin", "loaf of bread", "croissant",
             "hamburger", "donut", "apple", "pear", "banana bunch", "cheese wheel", "ice cream cone", "pretzel"),
    "animals": ("cat figurine", "dog figurine", "horse statue", "owl figurine", "elephant statue", "frog figurine",
                "turtle figurine", "penguin figurine", "fox figurine", "deer statue", "lion statue",
                "rabbit figurine", "whale figurine", "parrot figurine", "snail figurine"),
    "plants": ("potted cactus", "bonsai tree", "potted fern", "sunflower in a pot", "succulent arrangement",
               "palm in a planter", "orchid in a pot", "mushroom cluster"),
    "sports": ("basketball", "soccer ball", "tennis racket", "baseball bat", "golf bag", "bowling pin",
               "dumbbell", "boxing glove", "surfboard", "ice skate", "hockey stick", "archery bow"),
    "architecture": ("lighthouse", "windmill", "pagoda", "castle tower", "wooden cabin", "gazebo", "water tower",
                     "mailbox", "fire hydrant", "street lamp", "park bench", "well", "birdhouse", "totem pole"),
    "office": ("stapler", "desk organizer", "globe", "hourglass", "fountain pen", "ink bottle", "book stack",
               "magnifying glass", "telescope", "microscope", "abacus", "chess piece", "trophy", "candle holder"),
}

MATERIALS = ("wooden", "ceramic", "glass", "brass", "cast iron", "stainless steel", "plastic", "marble",
             "porcelain", "leather", "woven rattan", "copper", "stone", "felt", "bronze", "painted tin")
COLOURS = ("red", "blue", "green", "yellow", "orange", "purple", "white", "black", "teal", "pink", "brown",
           "grey", "gold", "silver", "turquoise", "cream")
STYLES = ("minimalist", "art deco", "steampunk", "rustic", "futuristic", "victorian", "cartoonish",
          "mid-century modern", "scandinavian", "baroque", "low-poly", "hand-painted")
ERAS = ("antique", "1950s", "1970s", "modern", "medieval", "retro")


def all_categories() -> list[tuple[str, str]]:
    """(group, category) pairs in a stable order."""
    return [(g, c) for g, cats in CATEGORIES.items() for c in cats]
