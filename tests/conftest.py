"""Settings every test process needs before the engines load."""

import os

# CTranslate2 multiplies int8 matrices with Intel MKL on Intel CPUs and with oneDNN on others, and
# the two round differently: tiny.en then writes other words for the same audio (an AMD machine
# heard "that lens, fan," for Lachlan's fan where an Intel one heard "that lens fan"). The tests
# pin what tiny.en hears, so every machine uses MKL, which CTranslate2's wheels carry (on an AMD
# CPU it is about 3x slower). Daemons the tests start inherit it.
os.environ.setdefault("CT2_USE_MKL", "1")
