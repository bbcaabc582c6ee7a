"""``dosql shell``: an interactive SQL shell on the DB-API driver, psql/sqlite3 style.

- :mod:`.script` splits input into statements ended by ``;`` (outside quotes
  and comments) and tells whether a statement has ``?``/``:name`` placeholders;
- :mod:`.output` prints results in the ``table``, ``json`` or ``csv`` mode;
- :mod:`.session` runs statements and dot-commands on one connection and
  maps failures onto :mod:`dosql.exitcodes`;
- :mod:`.commands` holds the dot-commands (``.tables``, ``.schema``, ``.explain``,
  ``.mode``, ``.timer``, ``.help``, ``.quit``);
- :mod:`dosql.shell_cli` is the command line (``-c``, ``-f``, stdin, history).
"""
