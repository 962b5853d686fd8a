"""The execution engine: drives positions through the exchange and writes every outcome
back to the database. One module per thing that happens:

* ``engine.py``: what the handlers and the watcher call (enter, handle a request,
  reconcile, restore protection), each under the position's lock (``locks.py``);
* ``entry.py``: what happens when a position opens (validate, size, record the entry);
* ``requests.py``: exit, partial exit and scale-in requests turned into orders;
* ``orders.py``: driving one order (record the intent, send, look up; OCO pairs);
* ``recording.py``: where a fill is recorded (an exchange answer -> orders, trades, the
  position's status), with ``figures.py`` (the position's figures from its fills) and
  ``transitions.py`` (status moves through legal steps);
* ``protection.py``: stop-loss / take-profit placed, put back and cancelled, and what
  follows once an order settled;
* ``handlers.py`` and ``watcher.py``: the pipeline's handlers and the periodic passes.

Pure decisions (no I/O): ``client_ids.py``, ``statuses.py``, ``protection_plan.py`` and
``entry.entry_problem``. Rows: ``rows.py``. Paper or Binance: ``routing.py``. What every
part is given: ``context.py``.
"""
