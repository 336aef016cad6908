"""Simulated e-commerce platform: impression events with multi-task labels.

Users and items carry latent traits; every label is a Bernoulli (or noisy
regression) draw from a score built on those traits, and several tasks share
the same traits so that joint learning pays off. Part of the signal lives only
in free text (search query, item title, customer-service message), so a model
that ignores text cannot reach the Bayes optimum written to the oracle file.
"""

from __future__ import annotations

import csv
import os
import pathlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

EVENT_COLUMNS: tuple[str, ...] = (
    "event_id", "user_id", "item_id", "channel", "device", "item_category",
    "query", "item_title", "cs_message", "item_price", "user_age",
    "account_age_days", "user_orders_90d", "click", "purchase", "ad_click",
    "fraud", "intent", "satisfaction", "churn",
)
BINARY_TASKS: tuple[str, ...] = ("click", "purchase", "ad_click", "fraud", "churn")
LABEL_COLUMNS: tuple[str, ...] = (
    "click", "purchase", "ad_click", "fraud", "intent", "satisfaction", "churn",
)
ORACLE_COLUMNS: tuple[str, ...] = ("event_id",) + BINARY_TASKS
# Both relative to generate()'s out_dir.
EVENTS_FILE = "events/events.csv"
ORACLE_FILE = "oracle/bayes_optimal.csv"
INTENTS: tuple[str, ...] = (
    "order_status", "return_item", "refund_request", "payment_issue",
    "damaged_item", "cancel_account",
)
CATEGORIES: tuple[str, ...] = (
    "electronics", "fashion", "home", "beauty", "sports", "toys", "grocery",
    "gift_cards",
)
CHANNELS: tuple[str, ...] = ("search", "feed", "ad")
DEVICES: tuple[str, ...] = ("app", "mobile_web", "desktop")

_LATENT_DIM = 8
_CATEGORY_SHARE = (0.16, 0.16, 0.15, 0.12, 0.12, 0.10, 0.12, 0.07)
# Median price and log-spread per category (gift cards use denominations).
_PRICE_MEDIAN = (59.0, 45.0, 38.0, 19.0, 34.0, 24.0, 11.0, 50.0)
_PRICE_SIGMA = (0.55, 0.5, 0.55, 0.45, 0.55, 0.5, 0.4, 0.7)
_GIFT_DENOMINATIONS = (10, 25, 50, 100, 200, 500)
_GIFT_DENOM_SHARE = (0.12, 0.28, 0.27, 0.2, 0.08, 0.05)
_CHANNEL_SHARE = (0.4, 0.4, 0.2)
_CHURN_OBSERVED_SHARE = 0.85

# --------------------------------------------------------------------------
# Catalogue vocabulary. A product is
#   (title noun, query phrasings, adjectives, sizes, variants)
# where empty variants fall back to the category's variants. Attributes are
# per product so titles stay plausible ("Queen" sheets, "65W" chargers).
# --------------------------------------------------------------------------
_CATALOG: dict[str, dict[str, tuple]] = {
    "electronics": {
        "brands": ("Sonix", "Voltra", "Auralink", "Nexon", "Pulsewave", "Zentrix", "Kinetik", "Lumetra"),
        "variants": ("Black", "White", "Silver", "Space Grey", "Midnight Blue", "Graphite"),
        "premium": ("Premium", "Pro", "Studio Grade", "Flagship", "Hi-Fi"),
        "budget": ("Refurbished", "Cheap", "Basic", "Generic", "Renewed"),
        "products": (
            ("Headphones", ("headphones", "headset", "over ear headphones"),
             ("Wireless", "Noise Cancelling", "Over-Ear", "Foldable", "Bluetooth"),
             ("40mm Drivers", "30H Playtime"), ()),
            ("Earbuds", ("earbuds", "wireless earphones", "in ear earbuds"),
             ("True Wireless", "Noise Cancelling", "Sweatproof", "Bluetooth 5.3"),
             ("with Charging Case", "24H Battery"), ()),
            ("Bluetooth Speaker", ("bluetooth speaker", "portable speaker", "speaker"),
             ("Portable", "Waterproof", "Rugged", "Stereo"), ("20W", "12H Playtime", "IPX7"), ()),
            ("Smartwatch", ("smartwatch", "smart watch", "fitness smartwatch"),
             ("Fitness", "GPS", "Heart Rate", "AMOLED"), ("41mm", "45mm"), ()),
            ("USB-C Charger", ("usb-c charger", "phone charger", "fast charger"),
             ("Fast Charging", "GaN", "Dual Port", "Compact"), ("20W", "65W", "2-Pack"), ()),
            ("Power Bank", ("power bank", "portable charger", "battery power bank"),
             ("Ultra Slim", "Fast Charging", "Magnetic", "Portable"), ("10000mAh", "20000mAh"), ()),
            ("Wireless Mouse", ("wireless mouse", "computer mouse", "mouse"),
             ("Ergonomic", "Silent Click", "Rechargeable", "Bluetooth"), ("2.4GHz", "1600 DPI"), ()),
            ("Mechanical Keyboard", ("mechanical keyboard", "gaming keyboard", "keyboard"),
             ("RGB Backlit", "Hot-Swappable", "Wireless", "Compact"),
             ("75% Layout", "Full Size", "Brown Switches"), ()),
            ("Webcam", ("webcam", "web camera", "streaming webcam"),
             ("HD", "Auto Focus", "Wide Angle", "Plug and Play"), ("1080p", "4K"), ()),
            ("Tablet Case", ("tablet case", "ipad case", "tablet cover"),
             ("Shockproof", "Slim", "Folio", "Kickstand"), ("10.9 inch", "11 inch", "12.9 inch"), ()),
        ),
    },
    "fashion": {
        "brands": ("Marlowe", "Northpeak", "Velour & Co", "Urban Thread", "Ashby", "Solene", "Ridgeway"),
        "variants": ("Black", "Navy", "Camel", "Olive Green", "Burgundy", "Off White", "Charcoal"),
        "premium": ("Premium", "Handcrafted", "Italian Made", "Designer"),
        "budget": ("Cheap", "Budget", "Clearance", "Basic"),
        "products": (
            ("Leather Jacket", ("leather jacket", "biker jacket", "jacket"),
             ("Slim Fit", "Vintage", "Moto", "Quilted"), ("Size S", "Size M", "Size L", "Size XL"), ()),
            ("Sneakers", ("sneakers", "trainers", "casual sneakers"),
             ("Low Top", "Breathable", "Classic", "Chunky"), ("Size 8", "Size 9", "Size 10", "Size 11"), ()),
            ("Handbag", ("handbag", "purse", "shoulder handbag"),
             ("Crossbody", "Tote", "Quilted", "Structured"), ("Medium", "Large", "Mini"), ()),
            ("Wallet", ("wallet", "card wallet", "mens wallet"),
             ("RFID Blocking", "Bifold", "Slim", "Zip Around"), ("6 Card Slots", "Coin Pocket"), ()),
            ("Sunglasses", ("sunglasses", "shades", "polarized sunglasses"),
             ("Polarized", "Aviator", "Round", "Oversized"), ("UV400", "Unisex"), ()),
            ("T-Shirt", ("t-shirt", "tee", "cotton t-shirt"),
             ("Crew Neck", "Oversized", "Slim Fit", "Organic Cotton"), ("Size S", "Size M", "Size L", "3-Pack"), ()),
            ("Jeans", ("jeans", "denim jeans", "skinny jeans"),
             ("Straight Leg", "Skinny", "High Rise", "Stretch"),
             ("32W x 32L", "30W x 30L", "34W x 32L", "Size 10"), ()),
            ("Winter Coat", ("winter coat", "parka", "puffer coat"),
             ("Hooded", "Down", "Water Resistant", "Insulated"), ("Size M", "Size L", "Size XL"), ()),
            ("Summer Dress", ("summer dress", "dress", "maxi dress"),
             ("Floral", "Flowy", "Wrap", "Sleeveless"), ("Size 6", "Size 8", "Size 10", "Size 12"), ()),
            ("Wool Scarf", ("scarf", "wool scarf", "winter scarf"),
             ("Knitted", "Plaid", "Chunky", "Soft"), ("One Size", "70 x 12 inch"), ()),
        ),
    },
    "home": {
        "brands": ("Hearthly", "Casa Nova", "Oakridge", "Nestwell", "Brightline", "Lumo Home"),
        "variants": ("White", "Charcoal", "Sage Green", "Cream", "Slate Grey", "Terracotta"),
        "premium": ("Premium", "Luxury", "Professional", "Heavy Duty"),
        "budget": ("Cheap", "Basic", "Economy", "Budget", "Value"),
        "products": (
            ("Coffee Maker", ("coffee maker", "coffee machine", "drip coffee maker"),
             ("Programmable", "Drip", "Single Serve", "Stainless Steel"), ("12-Cup", "5-Cup"), ()),
            ("Throw Blanket", ("throw blanket", "blanket", "fleece throw"),
             ("Soft", "Sherpa", "Knitted", "Fleece"), ("50 x 60 inch", "60 x 80 inch"), ()),
            ("Desk Lamp", ("desk lamp", "led lamp", "reading lamp"),
             ("LED", "Dimmable", "Adjustable", "Eye-Caring"), ("with USB Port", "3 Color Modes"), ()),
            ("Cookware Set", ("cookware set", "pots and pans", "non stick cookware"),
             ("Non-Stick", "Stainless Steel", "Ceramic", "Induction Ready"), ("10-Piece", "12-Piece", "8-Piece"), ()),
            ("Bed Sheet Set", ("bed sheets", "sheet set", "cotton bed sheets"),
             ("Cotton", "Deep Pocket", "Breathable", "Wrinkle Free"), ("Queen", "King", "Twin", "Full"), ()),
            ("Robot Vacuum", ("robot vacuum", "vacuum cleaner", "robotic vacuum"),
             ("Self-Charging", "Quiet", "Wi-Fi Connected", "Slim"), ("2000Pa Suction", "120 Min Runtime"), ()),
            ("Scented Candle", ("scented candle", "candle", "soy candle"),
             ("Soy Wax", "Hand Poured", "Long Lasting", "3-Wick"),
             ("8 oz", "14 oz"), ("Lavender", "Vanilla", "Sandalwood", "Fresh Linen", "Eucalyptus")),
            ("Storage Baskets", ("storage baskets", "storage bins", "baskets"),
             ("Woven", "Collapsible", "Stackable", "Cotton Rope"), ("Set of 3", "Set of 4"), ()),
            ("Knife Set", ("knife set", "kitchen knives", "chef knife set"),
             ("Stainless Steel", "Forged", "Ultra Sharp", "Ergonomic"), ("15-Piece", "with Block", "6-Piece"), ()),
            ("Air Purifier", ("air purifier", "hepa air purifier", "air cleaner"),
             ("HEPA", "Quiet", "Smart", "Energy Efficient"), ("for Large Rooms", "for Bedroom"), ()),
        ),
    },
    "beauty": {
        "brands": ("Lumiere", "Verdant", "Glowlab", "Aurelle", "Pure Petal", "Moss & Mist"),
        "variants": ("Rose", "Unscented", "Lavender", "Citrus", "Coconut", "Green Tea"),
        "premium": ("Premium", "Organic", "Salon Professional", "Dermatologist Tested", "Luxury"),
        "budget": ("Cheap", "Basic", "Generic", "Value Pack", "Off-Brand"),
        "products": (
            ("Face Moisturizer", ("moisturizer", "face cream", "face moisturizer"),
             ("Hydrating", "Oil Free", "Fragrance Free", "Anti-Aging"), ("50 ml", "1.7 oz"), ()),
            ("Shampoo", ("shampoo", "sulfate free shampoo", "hair shampoo"),
             ("Sulfate Free", "Volumizing", "Moisturizing", "Clarifying"), ("8 fl oz", "16 fl oz", "2-Pack"), ()),
            ("Lipstick", ("lipstick", "lip color", "matte lipstick"),
             ("Matte", "Long Lasting", "Satin", "Creamy"), ("0.12 oz", "Set of 3"),
             ("Classic Red", "Nude", "Berry", "Coral Pink", "Mauve")),
            ("Eau de Parfum", ("perfume", "fragrance", "eau de parfum"),
             ("Floral", "Woody", "Fresh", "Long Lasting"), ("50 ml", "100 ml", "Travel Spray"), ()),
            ("Hair Dryer", ("hair dryer", "blow dryer", "hairdryer"),
             ("Ionic", "Lightweight", "Fast Drying", "Foldable"), ("1875W", "with Diffuser"),
             ("Black", "Rose Gold", "White")),
            ("Vitamin C Serum", ("vitamin c serum", "face serum", "serum"),
             ("Brightening", "Hyaluronic", "Vegan", "Anti-Aging"), ("30 ml", "1 fl oz"), ()),
            ("Nail Polish", ("nail polish", "nail varnish", "gel nail polish"),
             ("Quick Dry", "Gel Effect", "Chip Resistant", "Glossy"), ("0.5 fl oz", "Set of 6"),
             ("Cherry Red", "Ballet Pink", "Navy", "Glitter Gold")),
            ("Makeup Brush Set", ("makeup brushes", "brush set", "makeup brush set"),
             ("Synthetic", "Cruelty Free", "Soft", "Travel"), ("12-Piece", "8-Piece", "with Case"),
             ("Black", "Rose Gold", "Marble")),
            ("Sunscreen SPF 50", ("sunscreen", "spf 50", "sun cream"),
             ("Mineral", "Water Resistant", "Lightweight", "Reef Safe"), ("3 fl oz", "6 fl oz"), ()),
            ("Beard Trimmer", ("beard trimmer", "trimmer", "electric beard trimmer"),
             ("Cordless", "Rechargeable", "Waterproof", "Precision"), ("with 20 Lengths", "90 Min Runtime"),
             ("Black", "Gunmetal", "Silver")),
        ),
    },
    "sports": {
        "brands": ("Stridemax", "Peakform", "Trailhawk", "Corefit", "Aerolite", "Summit Gear"),
        "variants": ("Black", "Neon Green", "Royal Blue", "Orange", "Grey", "Teal"),
        "premium": ("Premium", "Professional", "Competition Grade", "Pro"),
        "budget": ("Cheap", "Basic", "Beginner", "Budget", "Entry Level"),
        "products": (
            ("Yoga Mat", ("yoga mat", "exercise mat", "workout mat"),
             ("Non-Slip", "Extra Thick", "Eco Friendly", "Foldable"), ("6mm", "8mm", "72 x 24 inch"), ()),
            ("Adjustable Dumbbells", ("dumbbells", "weights", "adjustable dumbbells"),
             ("Quick Lock", "Anti-Roll", "Compact"), ("25 lb", "52.5 lb", "Pair"), ()),
            ("Running Shoes", ("running shoes", "runners", "jogging shoes"),
             ("Lightweight", "Cushioned", "Breathable", "Trail"), ("Size 8", "Size 9", "Size 10", "Size 11"), ()),
            ("Water Bottle", ("water bottle", "sports bottle", "insulated water bottle"),
             ("Insulated", "Leak Proof", "BPA Free", "Stainless Steel"), ("24 oz", "32 oz", "40 oz"), ()),
            ("Tennis Racket", ("tennis racket", "racquet", "tennis racquet"),
             ("Lightweight", "Oversize Head", "Pre-Strung", "Graphite"), ("Grip Size 2", "Grip Size 3", "27 inch"), ()),
            ("Bike Helmet", ("bike helmet", "cycling helmet", "helmet"),
             ("Ventilated", "Adjustable", "MIPS", "Lightweight"), ("Size M", "Size L", "Adult"), ()),
            ("Resistance Bands", ("resistance bands", "exercise bands", "workout bands"),
             ("Latex Free", "Stackable", "Heavy", "Fabric"), ("Set of 5", "with Handles"), ()),
            ("Camping Tent", ("tent", "camping tent", "4 person tent"),
             ("Waterproof", "Instant Setup", "Dome", "Lightweight"), ("2 Person", "4 Person", "6 Person"), ()),
            ("Hiking Backpack", ("hiking backpack", "backpack", "daypack"),
             ("Water Resistant", "Lightweight", "Ventilated", "Durable"), ("30L", "40L", "55L"), ()),
            ("Soccer Ball", ("soccer ball", "football", "size 5 soccer ball"),
             ("Match", "Training", "Durable", "Hybrid Stitched"), ("Size 4", "Size 5"), ()),
        ),
    },
    "toys": {
        "brands": ("Brickly", "Wonderpal", "Tiny Titans", "Playforge", "Kidzmo", "Starbright"),
        "variants": ("Dinosaur", "Space", "Unicorn", "Safari Animals", "Ocean", "Rainbow"),
        "premium": ("Premium", "Deluxe", "Collector's Edition", "Handmade", "Award Winning"),
        "budget": ("Cheap", "Mini", "Basic", "Party Favor", "Off-Brand"),
        "products": (
            ("Building Blocks Set", ("building blocks", "lego set", "brick building set"),
             ("Creative", "STEM", "Classic", "Compatible"), ("500 Pieces", "1000 Pieces", "Ages 6+"), ()),
            ("Teddy Bear", ("teddy bear", "plush bear", "stuffed animal"),
             ("Soft", "Cuddly", "Huggable", "Classic"), ("12 inch", "18 inch", "24 inch"),
             ("Brown", "Cream", "Pink", "Honey")),
            ("Jigsaw Puzzle", ("puzzle", "jigsaw puzzle", "1000 piece puzzle"),
             ("Challenging", "Family", "Landscape", "Colorful"), ("500 Pieces", "1000 Pieces"), ()),
            ("Remote Control Car", ("rc car", "remote control car", "toy car"),
             ("High Speed", "Off Road", "Rechargeable", "4WD"), ("1:16 Scale", "2.4GHz", "Ages 8+"),
             ("Red", "Blue", "Green", "Black")),
            ("Board Game", ("board game", "family game", "strategy board game"),
             ("Family", "Strategy", "Cooperative", "Party"), ("2-6 Players", "Ages 10+"), ()),
            ("Dollhouse", ("dollhouse", "doll house", "wooden dollhouse"),
             ("Wooden", "3 Story", "Furnished", "Light Up"), ("with 20 Accessories", "Ages 3+"), ()),
            ("Action Figure", ("action figure", "superhero figure", "figure"),
             ("Poseable", "Collectible", "Articulated", "Light Up"), ("6 inch", "12 inch"), ()),
            ("Wooden Train Set", ("train set", "wooden train", "toy train"),
             ("Wooden", "Battery Operated", "Classic", "Expandable"), ("100-Piece", "52-Piece", "Ages 3+"), ()),
            ("Art Kit", ("art kit", "drawing set", "craft kit"),
             ("Deluxe", "Portable", "Washable", "Complete"), ("150-Piece", "with Carry Case"), ()),
            ("Kids Drone", ("kids drone", "mini drone", "toy drone"),
             ("Easy to Fly", "Altitude Hold", "Foldable", "Rechargeable"), ("with Camera", "2 Batteries"),
             ("Black", "Blue", "Orange")),
        ),
    },
    "grocery": {
        "brands": ("Harvest Lane", "Golden Grove", "Bean & Barrel", "Nature's Pantry", "Fieldstone", "Mill & Mortar"),
        "variants": ("Original", "Sea Salt", "Vanilla", "Honey", "Classic"),
        "premium": ("Organic", "Premium", "Artisan", "Small Batch"),
        "budget": ("Cheap", "Value Size", "Store Brand", "Bulk", "Economy"),
        "products": (
            ("Whole Bean Coffee", ("coffee beans", "whole bean coffee", "coffee"),
             ("Fair Trade", "Single Origin", "Freshly Roasted"), ("12 oz", "2 lb"),
             ("Dark Roast", "Medium Roast", "Espresso Roast")),
            ("Green Tea", ("green tea", "tea bags", "matcha green tea"),
             ("Antioxidant", "Decaf", "Loose Leaf"), ("100 Count", "20 Count"), ("Jasmine", "Mint", "Classic")),
            ("Extra Virgin Olive Oil", ("olive oil", "extra virgin olive oil", "evoo"),
             ("Cold Pressed", "First Harvest", "Unfiltered"), ("500 ml", "1 Liter", "16.9 fl oz"), ()),
            ("Dark Chocolate", ("dark chocolate", "chocolate bar", "70% dark chocolate"),
             ("70% Cacao", "Fair Trade", "Low Sugar"), ("3.5 oz", "12-Pack"),
             ("Sea Salt", "Orange", "Mint", "Classic")),
            ("Protein Bars", ("protein bars", "protein bar", "snack bars"),
             ("High Protein", "Low Sugar", "Gluten Free", "Keto Friendly"), ("12-Pack", "24 Count"),
             ("Chocolate Chip", "Peanut Butter", "Cookies and Cream")),
            ("Pasta", ("pasta", "spaghetti", "penne pasta"),
             ("Whole Wheat", "Bronze Cut", "Gluten Free"), ("1 lb", "Pack of 6"), ("Spaghetti", "Penne", "Fusilli")),
            ("Raw Honey", ("honey", "raw honey", "manuka honey"),
             ("Unfiltered", "Pure", "Local"), ("12 oz", "16 oz", "2 lb"), ("Wildflower", "Clover", "Manuka")),
            ("Mixed Nuts", ("mixed nuts", "nuts", "roasted almonds"),
             ("Roasted", "Unsalted", "Lightly Salted"), ("1 lb", "2 lb", "Resealable Bag"), ()),
            ("Granola", ("granola", "breakfast cereal", "muesli"),
             ("Whole Grain", "Low Sugar", "High Fiber"), ("12 oz", "Pack of 4"),
             ("Almond Honey", "Berry", "Maple Pecan")),
            ("Hot Sauce", ("hot sauce", "chili sauce", "sriracha"),
             ("Spicy", "Small Batch", "Fermented"), ("5 fl oz", "Variety 3-Pack"), ("Habanero", "Chipotle", "Garlic")),
        ),
    },
    "gift_cards": {
        "brands": ("Shoply", "Streamix", "Gamevault", "DineOut", "Cinemax", "Travelwise"),
        "variants": ("Birthday", "Thank You", "Holiday", "Congratulations", "Happy Anniversary"),
        "premium": ("Gift Box Edition", "Holiday Edition"),
        "budget": (),
        "products": (
            ("Gift Card", ("gift card", "giftcard", "store gift card"), (), (), ()),
            ("eGift Card", ("egift card", "e gift card", "digital gift card"), (), (), ()),
            ("Gaming Gift Card", ("gaming gift card", "game card", "game credit"), (), (), ()),
            ("Streaming Gift Card", ("streaming gift card", "streaming card", "subscription gift card"), (), (), ()),
            ("Restaurant Gift Card", ("restaurant gift card", "dining gift card", "food gift card"), (), (), ()),
            ("Prepaid Card", ("prepaid card", "prepaid visa", "reloadable prepaid card"), (), (), ()),
        ),
    },
}
_LEATHER_GOODS = frozenset({"Wallet", "Handbag", "Sneakers"})
_LEATHER_CUES = {1: "Genuine Leather", -1: "Faux Leather"}
_DIGITAL_DELIVERY = ("Instant Email Delivery", "Digital Code", "Sent by Email in Minutes",
                     "Code Delivered Instantly", "Redeem Online Instantly")
_PHYSICAL_DELIVERY = ("Mailed in a Greeting Card", "Physical Card, Free Shipping",
                      "Gift Box Included", "Ships in 2 Days")

_QUERY_RECIPIENTS = ("men", "women", "kids", "teens", "dad", "mom", "office", "travel")
_QUERY_CHEAP = ("cheap {p}", "{p} under ${b}", "budget {p}", "{p} sale", "discount {p}", "affordable {p}")
_QUERY_PREMIUM = ("best {p}", "premium {p}", "top rated {p}", "high end {p}", "{p} {brand}")
_QUERY_PLAIN = ("{p}", "{p}", "{p}", "{adj} {p}", "{brand} {p}", "{p} for {r}", "{p} {variant}",
                "{p} {adj}", "new {p}", "{p} gift")

# --------------------------------------------------------------------------
# Customer-service messages: opener + intent body + closer, by sentiment.
# --------------------------------------------------------------------------
_CS_BODIES: dict[str, tuple[str, ...]] = {
    "order_status": (
        "my package was supposed to arrive on {day} and it still hasn't shown up. Where is it?",
        "can you tell me where my order {order} is? The tracking page hasn't updated in {n} days.",
        "I ordered the {item} {n} days ago and it still says processing. When will it ship?",
        "the tracking number you sent me doesn't work. Has my {item} actually been shipped?",
        "is there any update on the delivery of my {item}? I need it by {day}.",
        "how long does shipping usually take? I'm still waiting on the {item}.",
        "could you check the status of order {order}? It's been stuck in transit since {day}.",
        "the estimated delivery date for my {item} keeps moving. When is it actually coming?",
        "my order {order} says out for delivery since {day} but nothing arrived yet.",
        "just checking when my {item} will be delivered, the app shows no tracking info.",
    ),
    "return_item": (
        "I'd like to return the {item}, it doesn't fit.",
        "how do I send back the {item}? I changed my mind about it.",
        "the {item} is the wrong size, can I exchange it or return it?",
        "can you send me a return label for order {order}?",
        "I bought the {item} as a gift but they already have one. How do returns work?",
        "the colour of the {item} looks nothing like the photos, I want to send it back.",
        "is it too late to return the {item}? I bought it {n} days ago.",
        "I'd like to start a return for the {item}, it's not what I expected.",
        "where do I drop off a return? I want to send the {item} back.",
        "the {item} is fine but I ordered two by mistake, can I return one?",
    ),
    "refund_request": (
        "I sent the {item} back {n} weeks ago and still haven't received my refund.",
        "I was told I'd get my money back for order {order} but nothing has shown up on my card.",
        "please refund the ${amount} you charged me for the {item}.",
        "my return was delivered to your warehouse on {day}. When will the refund be processed?",
        "I cancelled order {order} before it shipped, so where is my money?",
        "I want my money back for the {item}, it was a waste.",
        "the refund for the {item} was only partial, I'm still owed ${amount}.",
        "you confirmed my return {n} days ago but the refund still says pending.",
        "can you reimburse me for the {item}? I returned it already.",
    ),
    "payment_issue": (
        "my card was charged twice for order {order}.",
        "the checkout keeps saying my payment was declined but my bank says everything is fine.",
        "I was charged ${amount} but the price on the site was lower.",
        "I can't add my credit card, it keeps saying the billing address is invalid.",
        "my gift card balance isn't being applied at checkout.",
        "there's a charge of ${amount} from you on my statement that I don't recognise.",
        "my PayPal payment went through but the order shows as unpaid.",
        "the promo code didn't apply and I got billed the full price for the {item}.",
        "why was my card authorised for ${amount} when my order was cheaper?",
    ),
    "damaged_item": (
        "the {item} arrived broken and the box was completely crushed.",
        "I opened the package and the {item} was cracked.",
        "the {item} stopped working after {n} days.",
        "the {item} came with parts missing and a big scratch on the front.",
        "the {item} I received is damaged, I need a replacement.",
        "the {item} was smashed when it arrived, I can send photos.",
        "the {item} is leaking everywhere, the seal was broken on delivery.",
        "the {item} has a dent and doesn't turn on at all.",
        "the {item} is defective, it was faulty right out of the box.",
    ),
    "cancel_account": (
        "please delete my account and all my personal data.",
        "I want to close my account, I won't be shopping here again.",
        "how do I cancel my membership? Please stop the auto-renewal.",
        "please unsubscribe me from everything and deactivate my account.",
        "I'm done with this store. Close my account.",
        "remove my account and stop sending me emails.",
        "I'd like to terminate my account and cancel the Plus subscription.",
        "can you permanently deactivate my profile? I'm leaving for another shop.",
    ),
}
_CS_OPENERS = (
    ("Hi,", "Hello,", "Hi there,", "Good morning,", "Hello team,", "Hi, hope you're well.", "Dear support,"),
    ("", "", "Hi.", "Hello.", "Support:"),
    ("This is ridiculous.", "I am extremely frustrated.", "Seriously?", "Unacceptable.",
     "I'm really annoyed.", "This is the third time I'm writing.", "What a joke."),
)
_CS_CLOSERS = (
    ("Thanks so much for your help!", "Thank you in advance.", "Appreciate any help, thanks!",
     "Thanks, have a great day.", "No rush, thank you.", "Many thanks."),
    ("", "", "Thanks.", "Please advise.", "Let me know."),
    ("Fix this now.", "Worst customer service I've ever dealt with.", "I expect an answer today.",
     "I will be disputing this with my bank.", "Absolutely terrible.", "Never ordering again."),
)
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

# Intent mechanics: base propensity, mean satisfaction and how much it angers.
_INTENT_BASE = np.array([0.8, 0.3, 0.0, -0.2, -0.1, -0.9])
_INTENT_SATISFACTION = np.array([3.7, 3.6, 2.8, 3.1, 2.6, 2.1])
_INTENT_ANGER = np.array([0.0, -0.3, 0.6, 0.4, 0.8, 0.5])
_INTENT_BAD = np.array([0, 0, 1, 0, 1, 1], dtype=bool)
_CANCEL = INTENTS.index("cancel_account")
_SENTENCE_END = re.compile(r"\.(\s|$)")


@dataclass(frozen=True)
class GeneratedData:
    events_csv: pathlib.Path
    oracle_csv: pathlib.Path
    rows: int
    label_counts: dict[str, int]


@dataclass(frozen=True)
class _Users:
    taste: np.ndarray        # (n, d) latent engagement preferences
    cat_prob: np.ndarray     # (n, n_categories) browsing distribution
    risk: np.ndarray
    loyalty: np.ndarray
    price_sens: np.ndarray
    activity: np.ndarray
    age: np.ndarray
    account_age: np.ndarray
    orders_90d: np.ndarray
    device: np.ndarray
    churn_observed: np.ndarray


@dataclass(frozen=True)
class _Items:
    category: np.ndarray
    product: np.ndarray      # global product id (offset by category)
    latent: np.ndarray       # (n, d)
    quality: np.ndarray
    price: np.ndarray
    price_z: np.ndarray      # price relative to its category
    digital: np.ndarray
    cue: np.ndarray          # -1 budget cue in title, +1 premium cue, 0 none
    titles: list[str]
    nouns: list[str]         # short product noun used in CS messages


@dataclass(frozen=True)
class _Events:
    user: np.ndarray
    item: np.ndarray
    channel: np.ndarray
    device: np.ndarray
    want_cat: np.ndarray
    want_product: np.ndarray
    queries: list[str]


@dataclass(frozen=True)
class _Support:
    has_msg: np.ndarray
    intent: np.ndarray       # -1 where no message
    satisfaction: np.ndarray
    messages: list[str]


@dataclass(frozen=True)
class _Labels:
    values: dict[str, np.ndarray]   # float arrays, NaN where unobserved
    probs: dict[str, np.ndarray]    # oracle probabilities, NaN where unobserved


def generate(rows: int, seed: int, out_dir: str | os.PathLike) -> GeneratedData:
    """Simulate `rows` impression events and write events + oracle CSVs.

    Writes `out_dir/events/events.csv` (training data, the only file in its
    folder) and `out_dir/oracle/bayes_optimal.csv` (the probability each
    binary label was drawn with). Output is byte-identical for a given
    (rows, seed).
    """
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(len(CATEGORIES), _LATENT_DIM))
    users = _make_users(rng, max(20, rows // 8), centroids)
    items = _make_items(rng, max(30, rows // 4), centroids)
    events = _make_events(rng, rows, users, items)
    labels, support = _draw_labels(rng, events, users, items)
    out = pathlib.Path(out_dir)
    events_csv, oracle_csv = out / EVENTS_FILE, out / ORACLE_FILE
    _write_events(events_csv, events, users, items, labels, support)
    _write_oracle(oracle_csv, labels)
    counts = {name: int(np.sum(~np.isnan(labels.values[name]))) for name in LABEL_COLUMNS}
    return GeneratedData(events_csv, oracle_csv, rows, counts)


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _pick(options: Sequence, u: float):
    """Choose from options with a pre-drawn uniform (keeps one RNG stream)."""
    return options[min(int(u * len(options)), len(options) - 1)]


def _categorical(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """Row-wise draw from a (n, k) matrix of probabilities."""
    cum = np.cumsum(probs, axis=1)
    u = rng.random(len(probs))[:, None] * cum[:, -1:]
    return np.minimum((u > cum).sum(axis=1), probs.shape[1] - 1)


def _typo(text: str, u: float) -> str:
    """Swap two adjacent letters, as hurried users do."""
    letters = [i for i in range(len(text) - 1) if text[i].isalpha() and text[i + 1].isalpha()]
    if not letters:
        return text
    i = _pick(letters, u)
    return text[:i] + text[i + 1] + text[i] + text[i + 2:]


def _product_offsets() -> np.ndarray:
    sizes = [len(_CATALOG[c]["products"]) for c in CATEGORIES]
    return np.concatenate([[0], np.cumsum(sizes)])


def _split_product(product: int, offsets: np.ndarray) -> tuple[str, tuple]:
    cat = int(np.searchsorted(offsets, product, side="right") - 1)
    name = CATEGORIES[cat]
    return name, _CATALOG[name]["products"][product - offsets[cat]]


# --------------------------------------------------------------------------
# Users
# --------------------------------------------------------------------------
def _make_users(rng: np.random.Generator, n: int, centroids: np.ndarray) -> _Users:
    taste = rng.normal(size=(n, _LATENT_DIM))
    cat_logits = 1.3 * taste @ centroids.T / np.sqrt(_LATENT_DIM)
    cat_prob = np.exp(cat_logits - cat_logits.max(axis=1, keepdims=True))
    cat_prob /= cat_prob.sum(axis=1, keepdims=True)
    loyalty = rng.normal(size=n)
    risk = rng.normal(size=n)
    age = np.clip(np.round(rng.normal(40, 13, size=n)), 18, 80).astype(int)
    price_sens = rng.normal(size=n) - 0.015 * (age - 40)
    # Loyal users have older accounts; risky users skew towards fresh accounts.
    log_age = 5.6 + 0.7 * loyalty - 0.5 * risk + rng.normal(0, 0.8, size=n)
    account_age = np.clip(np.round(np.exp(log_age)), 0, 3000).astype(int)
    orders = rng.poisson(np.exp(0.4 + 0.55 * loyalty)).astype(int)
    activity = np.exp(0.45 * loyalty + rng.normal(0, 0.6, size=n))
    dev_logits = np.stack([0.6 - 0.04 * (age - 40), np.zeros(n), -0.3 + 0.05 * (age - 40)], axis=1)
    device = _categorical(rng, np.exp(dev_logits))
    observed = rng.random(n) < _CHURN_OBSERVED_SHARE
    return _Users(taste, cat_prob, risk, loyalty, price_sens, activity, age,
                  account_age, orders, device, observed)


# --------------------------------------------------------------------------
# Items
# --------------------------------------------------------------------------
def _make_items(rng: np.random.Generator, n: int, centroids: np.ndarray) -> _Items:
    category = rng.choice(len(CATEGORIES), size=n, p=_CATEGORY_SHARE)
    category[: len(CATEGORIES)] = np.arange(len(CATEGORIES))  # every category exists
    offsets = _product_offsets()
    n_products = np.diff(offsets)[category]
    product = offsets[category] + np.floor(rng.random(n) * n_products).astype(int)
    noise = rng.normal(size=(n, _LATENT_DIM))
    latent = (centroids[category] + 0.7 * noise) / np.sqrt(1.49)
    quality = rng.normal(size=n)
    price, price_z = _item_prices(rng, category, quality)
    digital = (category == CATEGORIES.index("gift_cards")) & (rng.random(n) < 0.55)
    cue = _quality_cues(rng, category, quality)
    u = rng.random((n, 8))
    titles = [_item_title(int(product[i]), int(cue[i]), bool(digital[i]), float(price[i]), u[i], offsets)
              for i in range(n)]
    nouns = [_split_product(int(p), offsets)[1][0].lower() for p in product]
    return _Items(category, product, latent, quality, price, price_z, digital, cue, titles, nouns)


def _item_prices(rng: np.random.Generator, category: np.ndarray,
                 quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    median = np.log(np.array(_PRICE_MEDIAN))[category]
    sigma = np.array(_PRICE_SIGMA)[category]
    z = rng.normal(size=len(category))
    # Better items cost a bit more, so price is a weak proxy for quality.
    log_price = median + sigma * (0.35 * quality + 0.94 * z)
    price = np.maximum(np.round(np.exp(log_price)), 2.0) - 0.01
    gift = category == CATEGORIES.index("gift_cards")
    denoms = rng.choice(_GIFT_DENOMINATIONS, size=len(category), p=_GIFT_DENOM_SHARE)
    price = np.where(gift, denoms.astype(float), price)
    price_z = (np.log(price) - median) / sigma
    return price, price_z


def _quality_cues(rng: np.random.Generator, category: np.ndarray, quality: np.ndarray) -> np.ndarray:
    p_premium = _sigmoid(2.2 * quality - 1.6)
    p_budget = _sigmoid(-2.2 * quality - 1.6)
    u = rng.random(len(category))
    cue = np.where(u < p_premium, 1, np.where(u > 1 - p_budget, -1, 0))
    has_premium = np.array([bool(_CATALOG[c]["premium"]) for c in CATEGORIES])[category]
    has_budget = np.array([bool(_CATALOG[c]["budget"]) for c in CATEGORIES])[category]
    return np.where((cue == 1) & ~has_premium, 0, np.where((cue == -1) & ~has_budget, 0, cue))


def _item_title(product: int, cue: int, digital: bool, price: float,
                u: np.ndarray, offsets: np.ndarray) -> str:
    cat, entry = _split_product(product, offsets)
    vocab = _CATALOG[cat]
    noun, adjectives, sizes, variants = entry[0], *_attributes(cat, entry)
    cue_word = _cue_word(cat, noun, cue, u[0])
    brand = _pick(vocab["brands"], u[1])
    adj1 = _pick(adjectives, u[2])
    variant = _pick(variants, u[4])
    if cat == "gift_cards":
        delivery = _pick(_DIGITAL_DELIVERY if digital else _PHYSICAL_DELIVERY, u[3])
        return _gift_title(brand, noun, variant, cue_word, int(price), delivery, u[5])
    adj2 = _pick([a for a in adjectives if a != adj1], u[3])
    size = _pick(sizes, u[5])
    templates = (
        f"{brand} {cue_word}{adj1} {noun}, {variant}",
        f"{cue_word}{adj1} {adj2} {noun} - {variant}, {size}",
        f"{brand} {cue_word}{noun} {size} - {adj1}, {variant}",
        f"{cue_word}{adj1} {noun} by {brand}, {size}",
        f"{brand} {cue_word}{adj1} {adj2} {noun}, {size}, {variant}",
        f"{cue_word}{adj1} {noun} {size}, {variant} | {brand}",
    )
    return _pick(templates, u[6])


def _attributes(cat: str, entry: tuple) -> tuple[tuple, tuple, tuple]:
    """Adjectives, sizes and variants of a product, with category fallbacks."""
    fallback = _CATALOG[cat]["variants"]
    return entry[2] or fallback, entry[3] or ("",), entry[4] or fallback


def _cue_word(cat: str, noun: str, cue: int, u: float) -> str:
    vocab = _CATALOG[cat]
    options = vocab["premium"] if cue == 1 else vocab["budget"] if cue == -1 else ()
    if noun in _LEATHER_GOODS:
        options = options + (_LEATHER_CUES[cue],) * 2 if cue else options
    return _pick(options, u) + " " if options else ""


def _gift_title(brand: str, noun: str, occasion: str, cue_word: str, value: int,
                delivery: str, u: float) -> str:
    templates = (
        f"{brand} ${value} {cue_word}{noun} - {delivery}",
        f"{cue_word}{brand} {noun}, ${value} - {occasion} - {delivery}",
        f"${value} {brand} {occasion} {noun} ({delivery})",
        f"{brand} {noun} {cue_word}${value}, {delivery}",
    )
    return _pick(templates, u)


# --------------------------------------------------------------------------
# Events: who saw which item on which surface, and what they searched for
# --------------------------------------------------------------------------
def _make_events(rng: np.random.Generator, rows: int, users: _Users, items: _Items) -> _Events:
    user = rng.choice(len(users.loyalty), size=rows, p=users.activity / users.activity.sum())
    device = np.where(rng.random(rows) < 0.85, users.device[user], rng.integers(0, 3, size=rows))
    channel = rng.choice(len(CHANNELS), size=rows, p=_CHANNEL_SHARE)
    want_cat = _categorical(rng, users.cat_prob[user])
    offsets = _product_offsets()
    n_products = np.diff(offsets)[want_cat]
    want_product = offsets[want_cat] + np.floor(rng.random(rows) * n_products).astype(int)
    item = _retrieve_items(rng, channel, want_cat, want_product, items)
    queries = _make_queries(rng, channel, want_product, users.price_sens[user], offsets)
    return _Events(user, item, channel, device, want_cat, want_product, queries)


def _group_sampler(keys: np.ndarray, n_groups: int
                   ) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Return a function drawing a uniformly random item of a given group."""
    order = np.argsort(keys, kind="stable")
    counts = np.bincount(keys, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])

    def sample(groups: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = counts[groups]
        idx = starts[groups] + np.minimum(np.floor(u * c), np.maximum(c - 1, 0)).astype(int)
        return order[np.minimum(idx, len(order) - 1)], c > 0

    return sample


def _retrieve_items(rng: np.random.Generator, channel: np.ndarray, want_cat: np.ndarray,
                    want_product: np.ndarray, items: _Items) -> np.ndarray:
    rows = len(channel)
    by_product = _group_sampler(items.product, int(_product_offsets()[-1]))
    by_category = _group_sampler(items.category, len(CATEGORIES))
    exact, found = by_product(want_product, rng.random(rows))
    same_cat, _ = by_category(want_cat, rng.random(rows))
    exact = np.where(found, exact, same_cat)
    anything = rng.integers(0, len(items.category), size=rows)
    r = rng.random(rows)
    # Search retrieves on the query; feed and ads only know the user's tastes.
    search = np.where(r < 0.45, exact, np.where(r < 0.8, same_cat, anything))
    feed = np.where(r < 0.65, same_cat, anything)
    ad = np.where(r < 0.35, same_cat, anything)
    return np.select([channel == 0, channel == 1], [search, feed], ad)


def _make_queries(rng: np.random.Generator, channel: np.ndarray, want_product: np.ndarray,
                  price_sens: np.ndarray, offsets: np.ndarray) -> list[str]:
    u = rng.random((len(channel), 11))
    return [_query(int(want_product[i]), float(price_sens[i]), u[i], offsets) if channel[i] == 0 else ""
            for i in range(len(channel))]


def _query(product: int, price_sens: float, u: np.ndarray, offsets: np.ndarray) -> str:
    cat, entry = _split_product(product, offsets)
    adjectives, _, variants = _attributes(cat, entry)
    phrase = entry[1][0] if u[0] < 0.6 else _pick(entry[1][1:], u[1])
    # The query betrays price sensitivity, which drives purchase.
    if price_sens > 0.8 and u[2] < 0.6:
        template = _pick(_QUERY_CHEAP, u[3])
    elif price_sens < -0.8 and u[2] < 0.5:
        template = _pick(_QUERY_PREMIUM, u[3])
    else:
        template = _pick(_QUERY_PLAIN, u[3])
    text = template.format(
        p=phrase, b=_pick((20, 25, 30, 50, 100), u[4]),
        brand=_pick(_CATALOG[cat]["brands"], u[5]).lower(), adj=_pick(adjectives, u[6]).lower(),
        r=_pick(_QUERY_RECIPIENTS, u[7]), variant=_pick(variants, u[8]).lower(),
    )
    return _typo(text, u[10]) if u[9] < 0.03 else text


# --------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------
def _draw_labels(rng: np.random.Generator, ev: _Events, users: _Users,
                 items: _Items) -> tuple[_Labels, _Support]:
    rows = len(ev.user)
    is_ad = ev.channel == CHANNELS.index("ad")
    affinity = np.einsum("ij,ij->i", users.taste[ev.user], items.latent[ev.item]) / np.sqrt(_LATENT_DIM)
    p_click = _click_prob(ev, users, items, affinity)
    # Organic clicks are not logged on ad slots; ad_click covers those.
    click = (rng.random(rows) < p_click) & ~is_ad
    p_purchase = _purchase_prob(ev, users, items, affinity)
    purchase = click & (rng.random(rows) < p_purchase)
    p_ad = _ad_click_prob(ev, items, affinity)
    ad_click = rng.random(rows) < p_ad
    p_fraud = _fraud_prob(ev, users, items)
    fraud = rng.random(rows) < p_fraud
    support = _customer_service(rng, ev, users, items, purchase)
    p_churn_user = _churn_prob(ev, users, support)
    churn = rng.random(len(users.loyalty)) < p_churn_user
    masks = {"click": ~is_ad, "purchase": click, "ad_click": is_ad,
             "fraud": purchase, "churn": users.churn_observed[ev.user]}
    drawn = {"click": click, "purchase": purchase, "ad_click": ad_click,
             "fraud": fraud, "churn": churn[ev.user]}
    probs = {"click": p_click, "purchase": p_purchase, "ad_click": p_ad,
             "fraud": p_fraud, "churn": p_churn_user[ev.user]}
    values = {k: np.where(masks[k], drawn[k].astype(float), np.nan) for k in BINARY_TASKS}
    values["intent"] = np.where(support.has_msg, support.intent.astype(float), np.nan)
    values["satisfaction"] = np.where(support.has_msg, support.satisfaction, np.nan)
    oracle = {k: np.where(masks[k], probs[k], np.nan) for k in BINARY_TASKS}
    return _Labels(values, oracle), support


def _click_prob(ev: _Events, users: _Users, items: _Items, affinity: np.ndarray) -> np.ndarray:
    exact = items.product[ev.item] == ev.want_product
    same_cat = items.category[ev.item] == ev.want_cat
    app = ev.device == DEVICES.index("app")
    visible = 0.35 * items.cue[ev.item] + 0.25 * app
    search = (-4.3 + 2.4 * exact + 1.0 * same_cat + 0.7 * affinity
              - 0.45 * users.price_sens[ev.user] * items.price_z[ev.item])
    feed = -4.0 + 1.3 * affinity
    return _sigmoid(np.where(ev.channel == 0, search, feed) + visible)


def _purchase_prob(ev: _Events, users: _Users, items: _Items, affinity: np.ndarray) -> np.ndarray:
    exact = items.product[ev.item] == ev.want_product
    logit = (-2.6 + 1.1 * items.quality[ev.item] + 0.6 * affinity + 0.6 * exact
             - 0.7 * users.price_sens[ev.user] * items.price_z[ev.item]
             + 0.35 * users.loyalty[ev.user] + 0.2 * (ev.device == DEVICES.index("app")))
    return _sigmoid(logit)


def _ad_click_prob(ev: _Events, items: _Items, affinity: np.ndarray) -> np.ndarray:
    return _sigmoid(-3.5 + 1.3 * affinity + 0.3 * items.cue[ev.item])


def _fraud_prob(ev: _Events, users: _Users, items: _Items) -> np.ndarray:
    cat = items.category[ev.item]
    # Fresh accounts are the classic stolen-card pattern.
    new_account = 5.5 - np.log1p(users.account_age[ev.user])
    logit = (-2.9 + 1.3 * users.risk[ev.user] + 1.3 * (cat == CATEGORIES.index("gift_cards"))
             + 0.6 * (cat == CATEGORIES.index("electronics")) + 1.0 * items.digital[ev.item]
             + 0.6 * new_account + 0.4 * (ev.device == DEVICES.index("mobile_web"))
             + 0.25 * items.price_z[ev.item])
    return _sigmoid(logit)


def _customer_service(rng: np.random.Generator, ev: _Events, users: _Users, items: _Items,
                      purchase: np.ndarray) -> _Support:
    rows = len(ev.user)
    quality = items.quality[ev.item]
    loyalty = users.loyalty[ev.user]
    has_msg = rng.random(rows) < 0.17 + 0.35 * purchase
    logits = _INTENT_BASE + np.stack([
        0.8 * purchase, -0.3 * quality, -0.3 * quality, 0.5 * users.risk[ev.user],
        -0.8 * quality, -0.9 * loyalty], axis=1)
    intent = _categorical(rng, np.exp(logits))
    mood = -0.6 * loyalty + _INTENT_ANGER[intent] - 0.3 * quality + rng.normal(0, 0.7, size=rows)
    sentiment = np.digitize(mood, [-0.35, 0.55])  # 0 polite, 1 neutral, 2 angry
    noise = rng.normal(0, 0.4, size=rows)
    sat = _INTENT_SATISFACTION[intent] + 0.35 * loyalty - 0.75 * (sentiment - 1) + noise
    satisfaction = np.round(np.clip(sat, 1.0, 5.0), 1)
    intent = np.where(has_msg, intent, -1)
    u = rng.random((rows, 10))
    messages = [_cs_message(int(intent[i]), int(sentiment[i]), items.nouns[ev.item[i]], u[i])
                if has_msg[i] else "" for i in range(rows)]
    return _Support(has_msg, intent, satisfaction, messages)


def _cs_message(intent: int, sentiment: int, noun: str, u: np.ndarray) -> str:
    body = _pick(_CS_BODIES[INTENTS[intent]], u[0]).format(
        item=noun, day=_pick(_DAYS, u[1]), n=2 + int(u[2] * 12),
        order=f"#{100000 + int(u[3] * 900000)}", amount=f"{5 + u[4] * 195:.2f}",
    )
    opener = _pick(_CS_OPENERS[sentiment], u[5])
    closer = _pick(_CS_CLOSERS[sentiment], u[6])
    if opener.endswith(","):
        text = f"{opener} {body}"
    else:
        text = f"{opener} {body[0].upper()}{body[1:]}".strip()
    if sentiment == 2 and u[7] < 0.3:
        text = _SENTENCE_END.sub(r"!!\1", text.upper())  # shouting
    text = f"{text} {closer}".strip()
    return _typo(text, u[9]) if u[8] < 0.05 else text


def _churn_prob(ev: _Events, users: _Users, support: _Support) -> np.ndarray:
    n = len(users.loyalty)
    bad = support.has_msg & (_INTENT_BAD[np.maximum(support.intent, 0)] | (support.satisfaction < 2.5))
    n_bad = np.bincount(ev.user, weights=bad.astype(float), minlength=n)
    cancelled = np.bincount(ev.user, weights=(support.intent == _CANCEL).astype(float), minlength=n) > 0
    logit = (-1.8 - 1.3 * users.loyalty + 0.9 * np.minimum(n_bad, 3) + 2.0 * cancelled
             - 0.3 * np.log1p(users.orders_90d))
    return _sigmoid(logit)


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------
def _fmt_label(value: float) -> str:
    return "" if np.isnan(value) else str(int(value))


def _write_events(path: pathlib.Path, ev: _Events, users: _Users, items: _Items,
                  labels: _Labels, support: _Support) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    v = labels.values
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(EVENT_COLUMNS)
        for i in range(len(ev.user)):
            u, it = int(ev.user[i]), int(ev.item[i])
            writer.writerow([
                f"e{i + 1:07d}", f"u{u:05d}", f"i{it:05d}", CHANNELS[ev.channel[i]],
                DEVICES[ev.device[i]], CATEGORIES[items.category[it]], ev.queries[i],
                items.titles[it], support.messages[i], f"{items.price[it]:.2f}",
                int(users.age[u]), int(users.account_age[u]), int(users.orders_90d[u]),
                _fmt_label(v["click"][i]), _fmt_label(v["purchase"][i]),
                _fmt_label(v["ad_click"][i]), _fmt_label(v["fraud"][i]),
                INTENTS[support.intent[i]] if support.has_msg[i] else "",
                f"{support.satisfaction[i]:.1f}" if support.has_msg[i] else "",
                _fmt_label(v["churn"][i]),
            ])


def _write_oracle(path: pathlib.Path, labels: _Labels) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    probs = [labels.probs[k] for k in BINARY_TASKS]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(ORACLE_COLUMNS)
        for i in range(len(probs[0])):
            writer.writerow([f"e{i + 1:07d}"] + ["" if np.isnan(p[i]) else f"{p[i]:.6f}" for p in probs])
