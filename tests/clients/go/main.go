// A ClickHouse client as Grafana's ClickHouse data source is one: clickhouse-go v2 over HTTP with
// its defaults (Native with client_protocol_version, the server hello query under the 30 s dial
// timeout, so max_execution_time 34-35) and queries under a 60 s deadline, Grafana's default query
// timeout (max_execution_time 64-65; the interface runs both under its own limit). It prints one
// JSON object of what it read; tests/unit/test_analyst_drivers.py checks it against the engine.
//
//	go run . -addr 127.0.0.1:8123 -user analyst -password ... [-compression none|lz4|zstd|gzip|br]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
)

type platformCount struct {
	Platform string `json:"platform"`
	N        uint64 `json:"n"`
}

type orderRow struct {
	OrderID   string    `json:"order_id"`
	Platform  string    `json:"platform"`
	ShipByNil bool      `json:"ship_by_is_null"`
	RiskFlags []string  `json:"risk_flags"`
	CreatedAt time.Time `json:"created_at"`
}

type report struct {
	ServerVersion string          `json:"server_version"`
	Platforms     []platformCount `json:"platforms"`
	Orders        []orderRow      `json:"orders"`
	BoundCount    uint64          `json:"bound_count"`
	PositionalSum int64           `json:"positional_sum"`
	StdBoundCount uint64          `json:"std_bound_count"`
	FirstHourUnix int64           `json:"first_hour_unix"`
	FirstHourZone string          `json:"first_hour_zone"`
	WriteErrCode  int32           `json:"write_error_code"`
	WriteErr      string          `json:"write_error"`
}

func compression(name string) (*clickhouse.Compression, error) {
	switch name {
	case "", "none":
		return nil, nil // the driver's default
	case "lz4":
		return &clickhouse.Compression{Method: clickhouse.CompressionLZ4}, nil
	case "zstd":
		return &clickhouse.Compression{Method: clickhouse.CompressionZSTD}, nil
	case "gzip":
		return &clickhouse.Compression{Method: clickhouse.CompressionGZIP}, nil
	case "br":
		return &clickhouse.Compression{Method: clickhouse.CompressionBrotli}, nil
	}
	return nil, fmt.Errorf("unknown compression %q", name)
}

func run() (*report, error) {
	addr := flag.String("addr", "127.0.0.1:8123", "host:port of the HTTP interface")
	user := flag.String("user", "default", "user")
	password := flag.String("password", "", "password")
	method := flag.String("compression", "none", "none, lz4, zstd, gzip or br")
	flag.Parse()
	comp, err := compression(*method)
	if err != nil {
		return nil, err
	}
	settings := clickhouse.Settings{}
	if comp != nil && (comp.Method == clickhouse.CompressionGZIP || comp.Method == clickhouse.CompressionBrotli) {
		// the driver asks with Accept-Encoding; a server compresses only when this setting is on
		settings["enable_http_compression"] = 1
	}
	options := &clickhouse.Options{
		Addr:        []string{*addr},
		Protocol:    clickhouse.HTTP,
		Auth:        clickhouse.Auth{Database: "default", Username: *user, Password: *password},
		Compression: comp,
		Settings:    settings,
	}
	conn, err := clickhouse.Open(options)
	if err != nil {
		return nil, fmt.Errorf("open: %w", err)
	}
	defer conn.Close()
	// as Grafana runs each query: under its query timeout (60 s by default), which the driver
	// sends as max_execution_time (the deadline + 5 s)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := conn.Ping(ctx); err != nil {
		return nil, fmt.Errorf("ping: %w", err)
	}
	out := &report{}
	version, err := conn.ServerVersion()
	if err != nil {
		return nil, fmt.Errorf("server version: %w", err)
	}
	out.ServerVersion = version.String()

	rows, err := conn.Query(ctx, "SELECT platform, count() AS n FROM order_events GROUP BY platform ORDER BY platform")
	if err != nil {
		return nil, fmt.Errorf("platform query: %w", err)
	}
	for rows.Next() {
		var pc platformCount
		if err := rows.Scan(&pc.Platform, &pc.N); err != nil {
			return nil, fmt.Errorf("platform scan: %w", err)
		}
		out.Platforms = append(out.Platforms, pc)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("platform rows: %w", err)
	}
	rows.Close()

	// LowCardinality, Nullable, Array and DateTime64 columns of the real table
	rows, err = conn.Query(ctx, "SELECT order_id, platform, ship_by, arrayConcat(risk_flags, [toString(status)]) "+
		"AS flags, created_at FROM order_events ORDER BY src_topic, src_partition, src_offset LIMIT 50")
	if err != nil {
		return nil, fmt.Errorf("orders query: %w", err)
	}
	for rows.Next() {
		var r orderRow
		var shipBy *time.Time
		if err := rows.Scan(&r.OrderID, &r.Platform, &shipBy, &r.RiskFlags, &r.CreatedAt); err != nil {
			return nil, fmt.Errorf("orders scan: %w", err)
		}
		r.ShipByNil = shipBy == nil
		out.Orders = append(out.Orders, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("orders rows: %w", err)
	}
	rows.Close()

	// a rollup's DateTime('UTC') column: its time zone travels in the column's type
	var hour time.Time
	if err := conn.QueryRow(ctx, "SELECT min(hour) FROM orders_hourly").Scan(&hour); err != nil {
		return nil, fmt.Errorf("hour query: %w", err)
	}
	out.FirstHourUnix, out.FirstHourZone = hour.Unix(), hour.Location().String()

	// a parameter bound by the server ({p:String}, sent as param_p) and one bound by the driver (?)
	if err := conn.QueryRow(ctx, "SELECT count() FROM order_events WHERE platform = {p:String}",
		clickhouse.Named("p", "JD")).Scan(&out.BoundCount); err != nil {
		return nil, fmt.Errorf("bound query: %w", err)
	}
	if err := conn.QueryRow(ctx, "SELECT toInt64(?) + 1", 41).Scan(&out.PositionalSum); err != nil {
		return nil, fmt.Errorf("positional query: %w", err)
	}

	// database/sql, as Grafana's data source opens the driver (clickhouse.OpenDB)
	db := clickhouse.OpenDB(options)
	defer db.Close()
	if err := db.QueryRowContext(ctx, "SELECT count() FROM order_events WHERE platform = ?", "JD").
		Scan(&out.StdBoundCount); err != nil {
		return nil, fmt.Errorf("database/sql query: %w", err)
	}

	werr := conn.Exec(ctx, "INSERT INTO order_events (order_id) VALUES ('driver-write')")
	if werr == nil {
		return nil, errors.New("the write was accepted")
	}
	out.WriteErr = werr.Error()
	var ex *clickhouse.Exception
	if errors.As(werr, &ex) {
		out.WriteErrCode = ex.Code
	}
	return out, nil
}

func main() {
	out, err := run()
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
