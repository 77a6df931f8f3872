"""Browser views of a store: ``cpr-zarr serve`` (a page of every result) and ``cpr-zarr view``
(results in neuroglancer), both served from this machine, with nothing loaded from the internet.

Needs the ``web`` extra (``pip install 'cpr_zarr[web]'``): neuroglancer's Python package,
whose wheel ships its web client, and tornado, its web server, which serves our pages too.
"""
