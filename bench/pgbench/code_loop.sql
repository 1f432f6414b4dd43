SELECT count(g) FROM generate_series(1, :calls) g;
