-- Everything the extension defines, as text, for scripts/check-upgrade to compare an upgraded
-- database with a fresh install. (pg_dump does not print an extension's member objects, so its
-- output cannot tell two extension schemas apart.)
\pset format unaligned
\pset tuples_only on
WITH ns AS (SELECT oid, nspname, nspacl FROM pg_namespace WHERE nspname IN ('totp', 'totp_private'))
SELECT line FROM (
    SELECT 'schema ' || n.nspname || ' acl=' || coalesce(n.nspacl::text, '') || ' comment=' || coalesce(obj_description(n.oid, 'pg_namespace'), '') AS line
      FROM ns n
    UNION ALL
    SELECT format('relation %s.%s kind=%s options=%s acl=%s comment=%s', n.nspname, c.relname, c.relkind,
                  c.reloptions, c.relacl, obj_description(c.oid, 'pg_class'))
      FROM pg_class c JOIN ns n ON n.oid = c.relnamespace
    UNION ALL
    SELECT format('column %s.%s.%s #%s %s notnull=%s default=%s comment=%s', n.nspname, c.relname, a.attname, a.attnum,
                  format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid),
                  col_description(c.oid, a.attnum))
      FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN ns n ON n.oid = c.relnamespace
      LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT format('constraint %s.%s %s %s', n.nspname, conrelid::regclass, conname, pg_get_constraintdef(co.oid))
      FROM pg_constraint co JOIN ns n ON n.oid = co.connamespace
    UNION ALL
    SELECT format('index %s', pg_get_indexdef(i.indexrelid))
      FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN ns n ON n.oid = c.relnamespace
    UNION ALL
    SELECT format('view %s.%s %s', n.nspname, c.relname, pg_get_viewdef(c.oid))
      FROM pg_class c JOIN ns n ON n.oid = c.relnamespace WHERE c.relkind = 'v'
    UNION ALL
    SELECT format('function %s acl=%s comment=%s %s', p.oid::regprocedure, p.proacl,
                  obj_description(p.oid, 'pg_proc'),
                  regexp_replace(pg_get_functiondef(p.oid), '/\*.*?\*/', '', 'g'))
      FROM pg_proc p JOIN ns n ON n.oid = p.pronamespace
    UNION ALL
    SELECT format('type %s comment=%s', t.oid::regtype, obj_description(t.oid, 'pg_type'))
      FROM pg_type t JOIN ns n ON n.oid = t.typnamespace WHERE t.typtype = 'c' AND t.typrelid IN
           (SELECT oid FROM pg_class WHERE relkind = 'c')
    UNION ALL
    SELECT format('config_dump %s', unnest(extconfig)::regclass) FROM pg_extension WHERE extname = 'totp_verify'
) lines
ORDER BY line;
