// Prints the Java client's partition for fixed keys: the test vectors in
// tests/unit/vectors/murmur2_partitions.json. Regenerate with:
//   jshell --class-path ".state/kafka/libs/*" scripts/kafka/murmur2-vectors.jsh > tests/unit/vectors/murmur2_partitions.json
import org.apache.kafka.common.utils.Utils;
String[] keys = {"21", "foobar", "a-little-bit-long-string", "a-little-bit-longer-string",
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", "abc", "customer-1", "customer-42",
    "cust-000017", "c", "Zürich-7", "ACME:eu-west@1", "x".repeat(100), "0", "customer-99999"};
int[] partitionCounts = {1, 3, 6, 12, 50};
StringBuilder out = new StringBuilder("[\n");
for (int i = 0; i < keys.length; i++) {
    byte[] bytes = keys[i].getBytes(java.nio.charset.StandardCharsets.UTF_8);
    StringBuilder parts = new StringBuilder();
    for (int n : partitionCounts) {
        if (parts.length() > 0) parts.append(", ");
        parts.append("\"" + n + "\": " + (Utils.toPositive(Utils.murmur2(bytes)) % n));
    }
    out.append("  {\"key\": \"" + keys[i] + "\", \"murmur2\": " + Utils.murmur2(bytes)
        + ", \"partitions\": {" + parts + "}}" + (i + 1 < keys.length ? ",\n" : "\n"));
}
out.append("]");
System.out.println(out);
/exit
