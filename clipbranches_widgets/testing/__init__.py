"""Helpers for tests, benchmarks and tutorials; not part of the engine or the app.

``synthetic``: generated clustered uint8 catalogs and labelled tasks (``clustered_catalog``,
``clustered_blocks``, ``labelled_task``), importable from a checkout or an installed package::

    from clipbranches_widgets.testing.synthetic import clustered_catalog, labelled_task
"""
