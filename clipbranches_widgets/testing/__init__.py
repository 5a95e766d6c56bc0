"""Helpers for tests, benchmarks and tutorials; not part of the engine or the app.

``synthetic``: generated clustered uint8 catalogs and labelled tasks (``clustered_catalog``,
``clustered_blocks``, ``labelled_task``), importable from a checkout or an installed package::

    from clipbranches_widgets.testing.synthetic import clustered_catalog, labelled_task

``widget_client``: a headless dashboard visitor that speaks the Jupyter widget protocol to a Voilà
server as a browser's widget manager does (``WidgetClient``, ``dashboard_visit``,
``run_protocol_class``), so tests and ``benchmarks/bench_class.py --client protocol`` can drive many
visitors without a browser's CPU.
"""
