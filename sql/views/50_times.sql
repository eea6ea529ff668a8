-- Time from queued to delivered, per day and provider (from pmta.rollup_delivery_time).

CREATE OR REPLACE VIEW pmta.time_to_deliver AS
SELECT day, provider,
       sum(n)::bigint AS deliveries,
       pmta.histogram_quantile(array_agg(bin ORDER BY bin), array_agg(n ORDER BY bin), 0.5)  AS p50_seconds,
       pmta.histogram_quantile(array_agg(bin ORDER BY bin), array_agg(n ORDER BY bin), 0.9)  AS p90_seconds,
       pmta.histogram_quantile(array_agg(bin ORDER BY bin), array_agg(n ORDER BY bin), 0.99) AS p99_seconds
FROM (
    SELECT day, provider, bin::integer AS bin, sum(n)::bigint AS n
    FROM pmta.delivery_time_histogram
    GROUP BY day, provider, bin
) h
GROUP BY day, provider;
