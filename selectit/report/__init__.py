"""The report wing: an HTML page with plots and the numbers behind them, for one dataset under
one `Ranking` (`selectit report`).

Modules: `build` (`build_report`: gathers, draws and writes through the guarded writer), `data`
(what the page shows, read from the fusion views, and the statistics), `sections` (one section per
figure or table), `page` (the HTML and the CSV files).

May import: the base modules, selectit.store, selectit.fusion and selectit.io.
"""
