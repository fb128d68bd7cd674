import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;

/**
 * The ClickHouse JDBC driver as DBeaver, Metabase and DataGrip use it: its default settings (the
 * server's answers in compressed blocks, RowBinary results). Prints one JSON object of what it
 * read; tests/unit/test_analyst_drivers.py checks it against the engine.
 *
 *   java -cp ... DriverCheck jdbc:clickhouse://127.0.0.1:8123/default analyst PASSWORD
 */
public final class DriverCheck {
    private DriverCheck() {}

    static String quote(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"': b.append("\\\""); break;
                case '\\': b.append("\\\\"); break;
                case '\n': b.append("\\n"); break;
                case '\r': b.append("\\r"); break;
                case '\t': b.append("\\t"); break;
                default:
                    if (c < 0x20) b.append(String.format("\\u%04x", (int) c)); else b.append(c);
            }
        }
        return b.append('"').toString();
    }

    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        props.setProperty("password", args[2]);
        List<String> fields = new ArrayList<>();
        try (Connection conn = DriverManager.getConnection(args[0], props)) {
            fields.add("\"driver\":" + quote(conn.getMetaData().getDriverName() + " "
                    + conn.getMetaData().getDriverVersion()));
            fields.add("\"server_version\":" + quote(conn.getMetaData().getDatabaseProductVersion()));
            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery(
                         "SELECT platform, count() AS n FROM order_events GROUP BY platform ORDER BY platform")) {
                List<String> rows = new ArrayList<>();
                while (rs.next()) {
                    rows.add("{\"platform\":" + quote(rs.getString("platform")) + ",\"n\":" + rs.getLong("n") + "}");
                }
                fields.add("\"platforms\":[" + String.join(",", rows) + "]");
            }
            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery("SELECT order_id, platform, ship_by, "
                         + "arrayConcat(risk_flags, [toString(status)]) AS flags, created_at FROM order_events "
                         + "ORDER BY src_topic, src_partition, src_offset LIMIT 50")) {
                List<String> rows = new ArrayList<>();
                while (rs.next()) {
                    rs.getObject("ship_by");
                    boolean shipByNull = rs.wasNull();
                    Object[] flags = (Object[]) rs.getArray("flags").getArray();
                    List<String> quoted = new ArrayList<>();
                    for (Object f : flags) quoted.add(quote(String.valueOf(f)));
                    rows.add("{\"order_id\":" + quote(rs.getString("order_id")) + ",\"platform\":"
                            + quote(rs.getString("platform")) + ",\"ship_by_is_null\":" + shipByNull
                            + ",\"risk_flags\":[" + String.join(",", quoted) + "],\"created_at_ms\":"
                            + rs.getTimestamp("created_at").getTime() + "}");
                }
                fields.add("\"orders\":[" + String.join(",", rows) + "]");
            }
            // what a SQL tool's navigator reads on connect: the tables and a table's columns
            List<String> tables = new ArrayList<>();
            try (ResultSet rs = conn.getMetaData().getTables(null, "default", "order%", null)) {
                while (rs.next()) tables.add(quote(rs.getString("TABLE_NAME")));
            }
            fields.add("\"tables\":[" + String.join(",", tables) + "]");
            List<String> columns = new ArrayList<>();
            try (ResultSet rs = conn.getMetaData().getColumns(null, "default", "order_events", null)) {
                while (rs.next()) columns.add(quote(rs.getString("COLUMN_NAME") + " " + rs.getString("TYPE_NAME")));
            }
            fields.add("\"columns\":[" + String.join(",", columns) + "]");
            try (PreparedStatement ps = conn.prepareStatement(
                    "SELECT count() AS n FROM order_events WHERE platform = ?")) {
                ps.setString(1, "JD");
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    fields.add("\"bound_count\":" + rs.getLong(1));
                }
            }
            try (Statement st = conn.createStatement()) {
                st.executeUpdate("INSERT INTO order_events (order_id) VALUES ('driver-write')");
                throw new IllegalStateException("the write was accepted");
            } catch (SQLException e) {
                fields.add("\"write_error_code\":" + e.getErrorCode());
                fields.add("\"write_error\":" + quote(String.valueOf(e.getMessage())));
            }
        }
        System.out.println("{" + String.join(",", fields) + "}");
    }
}
