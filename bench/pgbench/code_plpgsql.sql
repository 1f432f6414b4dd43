SELECT count(bench.plpgsql_hotp('\x3132333435363738393031323334353637383930'::bytea, g)) FROM generate_series(1, :calls) g;
