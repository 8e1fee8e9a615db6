"""Fill a migrated mailveil database with many bookings, fast: one INSERT … SELECT.

Tokens are ``(i * A + B) mod 2**48`` in 12 lower-case hex digits: a bijection for odd A, so
unique without a lookup, and random-looking. The API's own tokens are checked against
the table when bookings are registered afterwards, so they never clash with these.
"""

from __future__ import annotations

import time

from sqlalchemy import create_engine

SPACE = 1 << 48
CUSTOMER = (8_589_934_583, 0x5A17_3C9E_11D5)  # odd multipliers below 2**33: no overflow
SUPPLIER = (6_442_450_941, 0x2B9F_0E71_C4A3)

_SUPPLIER = ("INSERT INTO suppliers (id, name, email, locale, created_at, updated_at) "
             "VALUES ('fill-sup', 'Filler Tours', 'ops@filler.example', 'en', {now}, {now})")
_COLUMNS = ("reference, supplier_id, customer_name, customer_email, customer_locale, "
            "activity_start, activity_end, status, cancelled_at, customer_token, "
            "supplier_token, created_at, updated_at")

_PG = f"""INSERT INTO bookings ({_COLUMNS})
SELECT 'FILL-' || i, 'fill-sup', 'Filler ' || i, 'filler' || i || '@customer.example', 'en',
  TIMESTAMPTZ '2030-06-01 07:00:00+00' + mod(i, 1000) * INTERVAL '1 hour',
  TIMESTAMPTZ '2030-06-01 10:00:00+00' + mod(i, 1000) * INTERVAL '1 hour',
  'confirmed', NULL,
  lpad(to_hex(mod(i * {CUSTOMER[0]}::bigint + {CUSTOMER[1]}, {SPACE})), 12, '0'),
  lpad(to_hex(mod(i * {SUPPLIER[0]}::bigint + {SUPPLIER[1]}, {SPACE})), 12, '0'),
  now(), now()
FROM generate_series(1, {{n}}) AS i"""

_SQLITE = f"""WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < {{n}})
INSERT INTO bookings ({_COLUMNS})
SELECT 'FILL-' || i, 'fill-sup', 'Filler ' || i, 'filler' || i || '@customer.example', 'en',
  '2030-06-01 07:00:00.000000', '2030-06-01 10:00:00.000000', 'confirmed', NULL,
  printf('%012x', (i * {CUSTOMER[0]} + {CUSTOMER[1]}) % {SPACE}),
  printf('%012x', (i * {SUPPLIER[0]} + {SUPPLIER[1]}) % {SPACE}),
  '2026-01-01 00:00:00.000000', '2026-01-01 00:00:00.000000'
FROM seq"""


def fill(url: str, n: int) -> float:
    """Insert ``n`` bookings (and their supplier); returns the seconds it took."""
    started = time.monotonic()
    engine = create_engine(url)
    pg = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        conn.exec_driver_sql(_SUPPLIER.format(
            now="now()" if pg else "'2026-01-01 00:00:00.000000'"))
        conn.exec_driver_sql((_PG if pg else _SQLITE).format(n=n))
    with engine.connect() as conn:  # fresh planner statistics, as a real database has
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
    engine.dispose()
    return time.monotonic() - started
