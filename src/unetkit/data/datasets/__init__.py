"""Built-in datasets, one module each; importing a module registers it in ``DATASETS``.

:mod:`unetkit.data.registry` imports this package, so every module listed here is known to
``--dataset`` without further wiring. Add a dataset by adding its module and one import line.
"""

from unetkit.data.datasets import camvid as camvid
from unetkit.data.datasets import ccagt as ccagt
from unetkit.data.datasets import drive as drive
from unetkit.data.datasets import dsb2018 as dsb2018
from unetkit.data.datasets import isbi2012 as isbi2012
from unetkit.data.datasets import oxford_pet as oxford_pet
