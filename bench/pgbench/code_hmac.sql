SELECT count(public.hmac(int8send(g), '\x3132333435363738393031323334353637383930'::bytea, 'sha1')) FROM generate_series(1, :calls) g;
