// Runs PixelMed's DicomSRValidator on several files in one Java process (its main takes one file): the
// JVM starts and warms up once. Each file's report follows a line "==== FILE <path>"; the validator's
// standard error goes to standard output, so that each message stays with its file.
public class PixelmedBatch {
    public static void main(String[] args) throws Exception {
        System.setErr(System.out);
        for (String path : args) {
            System.out.println("==== FILE " + path);
            com.pixelmed.validate.DicomSRValidator.main(new String[] {path});
            System.out.flush();
        }
    }
}
